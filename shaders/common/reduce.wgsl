// Workgroup reductions over one value per thread. The including shader declares `WG` (its
// workgroup size, a power of two) and `var<workgroup> red: array<f32, WG>`. Call from uniform
// control flow: they contain barriers.

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (li < step) { red[li] += red[li + step]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (li < step) { red[li] = max(red[li], red[li + step]); }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    return m;
}
