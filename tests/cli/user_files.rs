//! The CLI with users' own files: single-file checkpoints and LoRAs.

use super::package::{generate, generate_prompt, run, PROMPT};
use super::{fixture, tmp};

/// A single-file checkpoint (`--model FILE.safetensors --config FOLDER`) generates the
/// folder's image, converts into the package the folder converts into, and without
/// `--config`, or with another family's configs, is refused in one line.
#[test]
fn single_file_checkpoints_generate_and_convert_like_their_folder() {
    for model in ["tiny-sd1", "tiny-sd2"] {
        let (folder, file) = (fixture(model), fixture(&format!("{model}-single")).join("model.safetensors"));
        let (folder, file) = (folder.to_str().unwrap(), file.to_str().unwrap());
        let from_file = generate(file, &["--config", folder], &tmp(&format!("{model}-single.png")));
        assert_eq!(from_file, generate(folder, &[], &tmp(&format!("{model}-folder.png"))), "{model}");
        let (a, b) = (tmp(&format!("{model}-single-q4")), tmp(&format!("{model}-folder-q4")));
        for (m, out, extra) in [(file, &a, vec!["--config", folder]), (folder, &b, vec![])] {
            let mut args = vec!["convert", "--model", m, "--out", out.to_str().unwrap(), "--quant", "q4_0"];
            args.extend(extra);
            let o = run(&args);
            assert!(o.status.success(), "{model}: {}", String::from_utf8_lossy(&o.stderr));
        }
        // The packages differ in bytes where the folder stores f16 (its text encoder) and the
        // file f32, and in the VAE's attention names (the folder's are the older ones); the
        // values, and so the images, are the same.
        let (pa, pb) =
            (generate(a.to_str().unwrap(), &[], &tmp("pa.png")), generate(b.to_str().unwrap(), &[], &tmp("pb.png")));
        assert!(pa == pb, "{model}: the single file's q4_0 package generates the folder's package's image");
    }
    let file = fixture("tiny-sd1-single").join("model.safetensors");
    let o = run(&["generate", "--model", file.to_str().unwrap(), "--prompt", "x", "--out", "/tmp/never.png"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--config names the diffusers folder"), "{err}");
    let sd2 = fixture("tiny-sd2");
    let args = ["generate", "--model", file.to_str().unwrap(), "--config", sd2.to_str().unwrap(), "--prompt", "x"];
    let o = run(&[&args[..], &["--out", "/tmp/never.png"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("SD 1.x"), "{err}");
}

/// LoRAs from the command line and from the prompt's A1111 tags: strength 0 is exactly the
/// base model's image, strength 1 changes it, and `<lora:kohya:1>` with `--lora-dir` is the
/// same as `--lora kohya.safetensors:1` (the tag never reaches the text encoder).
#[test]
fn loras_from_flags_and_prompt_tags() {
    let model = fixture("tiny-sd1");
    let dir = model.join("lora");
    let (model, kohya) = (model.to_str().unwrap(), dir.join("kohya.safetensors"));
    let base = generate(model, &[], &tmp("lora-base.png"));
    let zero = generate(model, &["--lora", &format!("{}:0", kohya.display())], &tmp("lora-0.png"));
    assert!(zero == base, "a LoRA at strength 0 gives the base model's image");
    let one = generate(model, &["--lora", &format!("{}:1", kohya.display())], &tmp("lora-1.png"));
    assert!(one != base, "a LoRA at strength 1 changes the image");
    let peft = generate(model, &["--lora", dir.join("peft.safetensors").to_str().unwrap()], &tmp("lora-p.png"));
    assert!(peft != base && peft != one);
    let prompt = format!("{PROMPT} <lora:kohya:1>");
    let tagged = generate_prompt(model, &prompt, &["--lora-dir", dir.to_str().unwrap()], &tmp("lora-tag.png"));
    assert!(tagged == one, "<lora:kohya:1> is --lora kohya.safetensors:1");
    let o = run(&["generate", "--model", model, "--prompt", &prompt, "--out", "/tmp/never.png"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--lora-dir"), "{err}");
    // A package's q4_0 matrices (what the page keeps) are merged and fitted again: at
    // strength 0 every weight stays as stored, at 1 the image changes.
    let pkg = tmp("lora-q4");
    assert!(run(&["convert", "--model", model, "--out", pkg.to_str().unwrap(), "--quant", "q4_0"]).status.success());
    let pkg = pkg.to_str().unwrap();
    let pkg_base = generate(pkg, &[], &tmp("lora-pkg.png"));
    let pkg_zero = generate(pkg, &["--lora", &format!("{}:0", kohya.display())], &tmp("lora-pkg-0.png"));
    assert!(pkg_zero == pkg_base, "strength 0 on a package is the package's image");
    let pkg_one = generate(pkg, &["--lora", &format!("{}:1", kohya.display())], &tmp("lora-pkg-1.png"));
    assert!(pkg_one != pkg_base, "a LoRA merges into a quantized package");
}
