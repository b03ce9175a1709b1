// Dequantization of one weight from a row-repacked q8_0 / q4_0 / q3_0 matrix (src/quant/mod.rs):
// row = [quant words of the row's blocks][f16 scales, two per u32]. `base` is the row's first
// word, `nb` its number of 32-blocks, `k` the column. Needs `bq: array<u32>` in scope.

fn dequant(base: u32, nb: u32, k: u32) -> f32 {
    let blk = k / 32u;
    let j = k % 32u;
    let scale_word = bq[base + nb * QWORDS + blk / 2u];
    let d = unpack2x16float(scale_word)[blk % 2u];
#if Q8
    let w = bq[base + blk * 8u + j / 4u];
    let q = bitcast<i32>(((w >> (8u * (j % 4u))) & 0xFFu) << 24u) >> 24u;
    return d * f32(q);
#else
#if Q3
    // Three words a block: low 2-bit parts of elements 0-15 and 16-31, then the high bits.
    let lo = (bq[base + blk * 3u + j / 16u] >> (2u * (j % 16u))) & 3u;
    let hi = (bq[base + blk * 3u + 2u] >> j) & 1u;
    return d * (f32(lo | (hi << 2u)) - 4.0);
#else
    let jj = j % 16u;
    let w = bq[base + blk * 4u + jj / 4u];
    let q = (w >> (8u * (jj % 4u) + select(0u, 4u, j >= 16u))) & 0xFu;
    return d * (f32(q) - 8.0);
#endif
#endif
}

// Four consecutive weights from column `k` (a multiple of 4): one quant word and one scale.
fn dequant4(base: u32, nb: u32, k: u32) -> vec4<f32> {
    let blk = k / 32u;
    let j = k % 32u;
    let d = unpack2x16float(bq[base + nb * QWORDS + blk / 2u])[blk % 2u];
#if Q8
    let w = bq[base + blk * 8u + j / 4u];
    let q = vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u), bitcast<i32>(w)) >> vec4<u32>(24u);
    return d * vec4<f32>(q);
#else
#if Q3
    return d * q3x4(bq[base + blk * 3u + j / 16u] >> (2u * (j % 16u)), bq[base + blk * 3u + 2u] >> j);
#else
    let w = bq[base + blk * 4u + (j % 16u) / 4u];
    let shift = select(0u, 4u, j >= 16u);
    let q = (vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(0xFu);
    return d * (vec4<f32>(q) - 8.0);
#endif
#endif
}

// Four q3_0 weights minus the zero point: `lo` holds their 2-bit low parts in its lowest byte,
// `hi` their high bits in its lowest four bits.
fn q3x4(lo: u32, hi: u32) -> vec4<f32> {
    let l = (vec4<u32>(lo) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u);
    let h = (vec4<u32>(hi) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
    return vec4<f32>(l | (h << vec4<u32>(2u))) - 4.0;
}
