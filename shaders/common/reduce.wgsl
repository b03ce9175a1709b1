// Workgroup reductions over one value per thread. The including shader declares `WG` (its
// workgroup size, a power of two) and `var<workgroup> red: array<f32, WG>`. Call from uniform
// control flow: they contain barriers.
//
// With SUBGROUPS the entry point takes `lanes: Lanes` and calls `subgroups_begin(lanes)` first:
// each subgroup reduces in registers, its first lane writes one partial, and every thread sums
// the partials in the same order (so all agree bit for bit): two barriers per reduction instead
// of log2(WG) + 2. Subgroup membership comes from `subgroup_id`, not from the invocation index,
// because WGSL does not promise that subgroups are contiguous runs of it.

#if SUBGROUPS
struct Lanes {
    @builtin(subgroup_id) id: u32,
    @builtin(num_subgroups) count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
};

// One partial per subgroup: WebGPU's smallest subgroup has 4 lanes.
var<workgroup> sg_part: array<f32, WG / 4u>;
var<private> sg: Lanes;

fn subgroups_begin(lanes: Lanes) {
    sg = lanes;
}

fn reduce_sum(li: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (sg.lane == 0u) { sg_part[sg.id] = s; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < sg.count; i++) { total += sg_part[i]; }
    workgroupBarrier();
    return total;
}

fn reduce_max(li: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    if (sg.lane == 0u) { sg_part[sg.id] = s; }
    workgroupBarrier();
    var m = sg_part[0];
    for (var i = 1u; i < sg.count; i++) { m = max(m, sg_part[i]); }
    workgroupBarrier();
    return m;
}
#else

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
#endif
