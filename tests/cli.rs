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
