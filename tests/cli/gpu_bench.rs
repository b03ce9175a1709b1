//! `scripts/gpu-bench.sh run` where there is no GPU: it stops at once with one clear line, for a
//! CPU Vulkan driver (lavapipe, what CI has) and for no Vulkan driver at all; it never runs a
//! benchmark on a CPU adapter or hangs.

use std::process::Command;

use super::tmp;

#[test]
fn the_gpu_benchmark_refuses_a_machine_without_a_gpu() {
    let bundle = tmp("gpu-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_webdiffusion"), bundle.join("webdiffusion")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-bench.sh");
    let run = |driver: Option<&str>| {
        let mut c = Command::new("bash");
        c.args([script, "run", bundle.to_str().unwrap()]).env("OUT", bundle.join("results"));
        if let Some(d) = driver {
            c.env("VK_DRIVER_FILES", d);
        }
        let t0 = std::time::Instant::now();
        let o = c.output().unwrap();
        assert!(t0.elapsed().as_secs() < 60, "it took {:?}", t0.elapsed());
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (code, err) = run(None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("(device type Cpu), not a GPU: this benchmark needs a GPU with a Vulkan driver"), "{err}");
    let (code, err) = run(Some("/nonexistent/icd.json"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gpu-bench: no GPU adapter"), "{err}");
    assert!(!bundle.join("results/ours-sd15-f16.json").exists(), "nothing was benchmarked");
    let missing = tmp("no-bundle");
    let o = Command::new("bash").args([script, "run", missing.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("webdiffusion is missing: make the bundle first"));
}
