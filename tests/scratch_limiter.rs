mod common;
use common::*;
use wgpu::util::DeviceExt;

fn run(src: &str, n: u32) -> Vec<u32> {
    let g = gpu();
    let dev = g.device();
    let m = dev.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(src.into()) });
    let pl = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor { label: None, layout: None, module: &m, entry_point: Some("main"), compilation_options: Default::default(), cache: None });
    let u = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&[n, 0, 0, 0]), usage: wgpu::BufferUsages::UNIFORM });
    let o = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: 64 * 4, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
    let r = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: 64 * 4, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pl.get_bind_group_layout(0), entries: &[
        wgpu::BindGroupEntry { binding: 0, resource: u.as_entire_binding() }, wgpu::BindGroupEntry { binding: 1, resource: o.as_entire_binding() }] });
    let mut e = dev.create_command_encoder(&Default::default());
    { let mut p = e.begin_compute_pass(&Default::default()); p.set_pipeline(&pl); p.set_bind_group(0, &bg, &[]); p.dispatch_workgroups(1, 1, 1); }
    e.copy_buffer_to_buffer(&o, 0, &r, 0, 256);
    g.queue().submit([e.finish()]);
    r.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    dev.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let v = bytemuck::cast_slice::<u8, u32>(&r.slice(..).get_mapped_range().unwrap()).to_vec();
    v
}

#[test]
fn limiter() {
    let single = "struct P { n: u32, a: u32, b: u32, c: u32 }; @group(0) @binding(0) var<uniform> p: P; @group(0) @binding(1) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) li: u32) { var c = 0u; for (var i = 0u; i < p.n; i++) { c += 1u; } var d = 0u; for (var i = 0u; i < 100u + p.a; i++) { d += 1u; } o[li] = c; if (li == 0u) { o[63] = d; } }";
    for n in [1000u32, 65000, 65534, 65535, 65536, 70000, 200000] {
        let v = run(single, n);
        eprintln!("single loop n={n}: count {} second loop(100) {}", v[0], v[63]);
    }
    let nested = "struct P { n: u32, a: u32, b: u32, c: u32 }; @group(0) @binding(0) var<uniform> p: P; @group(0) @binding(1) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) li: u32) { var c = 0u; for (var i = 0u; i < p.n; i++) { for (var j = 0u; j < 100u + p.a; j++) { c += 1u; } } o[li] = c; }";
    for n in [600u32, 700, 1000] {
        let v = run(nested, n);
        eprintln!("nested n={n} x 100: count {} (want {})", v[0], n * 100);
    }
}
