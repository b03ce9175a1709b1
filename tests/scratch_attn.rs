mod common;
use common::*;
use candle_core::{Device, Tensor};
use webdiffusion::gpu::{DType, GpuTensor};
use webdiffusion::ops::{self, AttentionLayout};
use webdiffusion::selftest::{cpu_attention, random_values};

#[test]
fn scratch() {
    let g = gpu();
    let cases: Vec<(usize, usize, usize, usize)> = std::env::var("CASES").unwrap_or("1024,64,1".into()).split(';').map(|s| {
        let v: Vec<usize> = s.split(',').map(|x| x.parse().unwrap()).collect(); (v[0], v[1], v[2], *v.get(3).unwrap_or(&v[0])) }).collect();
    for (n, d, h, nk) in cases {
        let shape = [1, n, h * d]; let kshape = [1, nk, h * d];
        let mk = |seed| random_values(seed, n * h * d);
        let mkk = |seed| random_values(seed, nk * h * d); let (qv, kv, vv) = (mk(1), mkk(2), mkk(3));
        let t = |v: &Vec<f32>| GpuTensor::from_f32_as(g, v, &shape, DType::F32).unwrap();
        let tk = |v: &Vec<f32>| GpuTensor::from_f32_as(g, v, &kshape, DType::F32).unwrap(); let (q, k, v) = (t(&qv), tk(&kv), tk(&vv));
        let out = ops::attention(&q, &k, &v, h, AttentionLayout::Merged, false, None).unwrap();
        let got = to_vec(&out);
        g.check().unwrap();
        let c = |v: &Vec<f32>| Tensor::from_vec(v.clone(), (1, v.len()/(h*d), h, d), &Device::Cpu).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let want = cpu_attention(&c(&qv), &c(&kv), &c(&vv), false).unwrap();
        let want: Vec<f32> = want.transpose(1, 2).unwrap().contiguous().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let zeros = got.iter().filter(|x| **x == 0.0).count();
        let bad: Vec<usize> = (0..got.len()).filter(|&i| (got[i] - want[i]).abs() > 1e-4).collect();
        let rows_bad: std::collections::BTreeSet<usize> = bad.iter().map(|i| i / (h * d)).collect();
        let nz_rows: std::collections::BTreeSet<usize> = (0..got.len()).filter(|&i| got[i] != 0.0).map(|i| i / (h*d)).collect();
        let nzc: Vec<(usize,usize,f32,f32)> = (0..got.len()).filter(|&i| got[i] != 0.0).take(6).map(|i| (i/(h*d), i%(h*d), got[i], want[i])).collect();
        eprintln!("dbg row0 {:?} row5 {:?}", &got[..8], &got[5*h*d..5*h*d+8]);
        eprintln!("nz sample {nzc:?} row0 got {:?} want {:?}", &got[..4], &want[..4]);
        eprintln!("nk={nk} n={n} d={d} h={h}: zeros {zeros}/{} bad {} rows_bad {} first rows_bad {:?} nonzero rows (first 40) {:?}", got.len(), bad.len(), rows_bad.len(), rows_bad.iter().take(10).collect::<Vec<_>>(), nz_rows.iter().take(40).collect::<Vec<_>>());
    }
}
