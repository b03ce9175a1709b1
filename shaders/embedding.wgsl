// Row gather out[t, :] = table[ids[t], :] for the ids that fall in this chunk of the table
// (rows [row0, row0 + rows)); a table split over several bindings is gathered chunk by chunk.
// QUANT: the table is a q8_0/q4_0/q3_0 matrix in the GPU row layout (src/quant/mod.rs), `ldb`
// words per row, dequantized as gathered (the token embeddings of SDXL's two text encoders are
// 202 MB in f16).

struct Params {
    n: u32, d: u32, row0: u32, rows: u32,
    ldb: u32, _p0: u32, _p1: u32, _p2: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#if QUANT
@group(0) @binding(2) var<storage, read> bq: array<u32>;
const QWORDS: u32 = {{QWORDS}}u;
#include "quant.wgsl"
#else
@group(0) @binding(2) var<storage, read> table: array<T>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<T>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let t = i / p.d;
    let c = i % p.d;
    let id = ids[t];
    if (id >= p.row0 && id < p.row0 + p.rows) {
#if QUANT
        y[i] = T(dequant((id - p.row0) * p.ldb, p.d / 32u, c));
#else
        y[i] = table[(id - p.row0) * p.d + c];
#endif
    }
}
