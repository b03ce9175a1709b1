// Sinusoidal timestep embedding as diffusers' get_timestep_embedding: for each timestep t and
// frequency f_j (computed on the host in f32, exactly as torch does), [sin(t f), cos(t f)], or
// [cos, sin] with FLIP (flip_sin_to_cos). Arguments reach ~1000 rad, beyond where GPU sin/cos
// are accurate, so they are reduced modulo 2*pi first with a split constant (Cody-Waite).

struct Params {
    n: u32, dim: u32, half_dim: u32, _pad: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read> freqs: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;

fn reduce_angle(x: f32) -> f32 {
    let k = round(x * 0.15915494309189535);
    // 2*pi = 6.28125 + 1.9353071795864769e-3 (the first part exact in f32 for |k| < 2^13).
    return (x - k * 6.28125) - k * 1.9353071795864769e-3;
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let row = i / p.dim;
    let j = i % p.dim;
    if (j >= 2u * p.half_dim) {
        y[i] = T(0.0);
        return;
    }
    let first = j < p.half_dim;
    let f = select(j - p.half_dim, j, first);
    let arg = reduce_angle(t[row] * freqs[f]);
#if FLIP
    let v = select(sin(arg), cos(arg), first);
#else
    let v = select(cos(arg), sin(arg), first);
#endif
    y[i] = T(v);
}
