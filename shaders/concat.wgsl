// Copies src, viewed as [outer, len], into dst viewed as [outer, dst_len] at column `offset`.
// A concat along any dim of contiguous tensors is one such copy per input.

struct Params {
    n: u32, len: u32, dst_len: u32, offset: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<T>;
@group(0) @binding(2) var<storage, read_write> dst: array<T>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let o = i / p.len;
    let r = i % p.len;
    dst[o * p.dst_len + p.offset + r] = src[i];
}
