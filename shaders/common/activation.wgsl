// Activations shared by several kernels (pasted by `#include "activation.wgsl"`).

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); WGSL has no erf builtin.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

// Exact GELU, as torch.nn.functional.gelu(approximate="none").
fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

// CLIP's quick_gelu: x * sigmoid(1.702 x).
fn gelu_quick(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}
