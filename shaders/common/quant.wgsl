// Dequantization of one weight from a row-repacked q8_0 / q4_0 matrix (see src/quant/mod.rs):
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
    let jj = j % 16u;
    let w = bq[base + blk * 4u + jj / 4u];
    let q = (w >> (8u * (jj % 4u) + select(0u, 4u, j >= 16u))) & 0xFu;
    return d * (f32(q) - 8.0);
#endif
}
