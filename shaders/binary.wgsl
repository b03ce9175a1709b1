// out = a OP b with numpy broadcasting, over at most 4 (collapsed) dims. Strides of 0 repeat
// an operand along that dim. OP_ADD or OP_MUL.

struct Params {
    n: u32, s1: u32, s2: u32, s3: u32,
    a0: u32, a1: u32, a2: u32, a3: u32,
    b0: u32, b1: u32, b2: u32, b3: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let i3 = i % p.s3;
    let t2 = i / p.s3;
    let i2 = t2 % p.s2;
    let t1 = t2 / p.s2;
    let i1 = t1 % p.s1;
    let i0 = t1 / p.s1;
    let av = f32(a[i0 * p.a0 + i1 * p.a1 + i2 * p.a2 + i3 * p.a3]);
    let bv = f32(b[i0 * p.b0 + i1 * p.b1 + i2 * p.b2 + i3 * p.b3]);
#if OP_ADD
    y[i] = T(av + bv);
#endif
#if OP_MUL
    y[i] = T(av * bv);
#endif
}
