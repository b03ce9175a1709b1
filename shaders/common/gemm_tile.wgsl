// The register-blocked core shared by matmul and conv2d: a 64x64 output tile per workgroup of
// 16x16 threads, each owning a 4x4 block (rows ty + 16 i, columns tx + 16 j), with K staged 16 at
// a time through workgroup memory in k-major order so the inner loop reads consecutive rows and
// columns across threads.

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> As: array<f32, 1024>; // [TK][TM]
var<workgroup> Bs: array<f32, 1024>; // [TK][TN]

// Adds the product of the staged As and Bs tiles to this thread's accumulators.
fn accumulate_tile(lid: vec3<u32>, acc: ptr<function, array<f32, 16>>) {
    for (var kk = 0u; kk < TK; kk++) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            av[i] = As[kk * TM + lid.y + 16u * i];
            bv[i] = Bs[kk * TN + lid.x + 16u * i];
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                (*acc)[i * 4u + j] = fma(av[i], bv[j], (*acc)[i * 4u + j]);
            }
        }
    }
}
