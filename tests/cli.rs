//! The CLI as a user meets it: `info` on a working device, and a clear message (no panic) where
//! there is no usable GPU.

use std::process::Command;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
}

#[test]
fn info_prints_adapter_and_limits() {
    let out = cli().arg("info").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for field in ["adapter:", "backend:", "shader-f16:", "max storage binding:", "max buffer size:"] {
        assert!(stdout.contains(field), "missing {field} in\n{stdout}");
    }
}

#[test]
fn no_adapter_is_a_clear_error() {
    // Metal does not exist on Linux: the same situation as a machine without any GPU driver.
    let out = cli().arg("info").env("WGPU_BACKEND", "metal").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn selftest_passes() {
    let out = cli().arg("selftest").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(" ok").count(), stdout.lines().count(), "{stdout}");
}

#[test]
fn tokenize_prints_77_ids_and_reports_truncation() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sd2");
    let out = cli().args(["tokenize", "--model", model, "wow!"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    // SD 2 pads with `!` (id 0) but keeps a typed `!` as text (256), as OpenCLIP does.
    assert_eq!(&ids[..5], &[49406, 2781, 256, 49407, 0]);
    assert_eq!(ids.len(), 77);

    let long = "a photo of a cat ".repeat(20);
    let out = cli().args(["tokenize", "--model", model, &long]).output().unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((ids.len(), ids[76]), (77, 49407));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("102 tokens; 25 were dropped"), "{stderr}");

    let out = cli().args(["tokenize", "--model", "/nonexistent", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no tokenizer/vocab.json"));
}
