// Nearest-neighbour 2x upsampling of [N*C, H, W] to [N*C, 2H, 2W].

struct Params {
    n: u32, h: u32, w: u32, _pad: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let w2 = 2u * p.w;
    let ox = i % w2;
    let t = i / w2;
    let oy = t % (2u * p.h);
    let nc = t / (2u * p.h);
    y[i] = x[(nc * p.h + oy / 2u) * p.w + ox / 2u];
}
