//! `webdiffusion adherence`: the demo model's prompt-adherence check through OUR pipeline.
//! The prompt set, the seeds, the inference settings and the pixel-analysis rule come from
//! `tools/tinymodel/adherence_prompts.json` (written by `tools/tinymodel/adherence.py`, which runs
//! the same check through diffusers); the rule is ported here step for step.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};
use webdiffusion::models::loader;
use webdiffusion::pipeline::generate::Request;
use webdiffusion::pipeline::prompt::PromptSyntax;
use webdiffusion::pipeline::rng::NormalRng;
use webdiffusion::{DType, Gpu};

#[derive(ClapArgs)]
pub struct Args {
    /// The model (a diffusers folder or a package).
    #[arg(long, default_value = "models/shapes-demo")]
    model: String,
    /// The prompt set with expected labels and the rule's parameters.
    #[arg(long, default_value = "tools/tinymodel/adherence_prompts.json")]
    prompts: PathBuf,
    /// Only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// N prompts evenly spread over the set (every color and position stays represented).
    #[arg(long)]
    count: Option<usize>,
    /// Denoising steps instead of the set's own (fewer is faster and less accurate).
    #[arg(long)]
    steps: Option<usize>,
    /// Prints a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// Prompts per U-Net batch (the images do not depend on it).
    #[arg(long, default_value_t = 40)]
    batch: usize,
    /// Store the weights as q8_0, q4_0 or q3_0 (the standard policy) instead of as published:
    /// quantization measured on a trained model.
    #[arg(long)]
    quant: Option<String>,
    /// Writes a grid of the generated images (rows of 10) to this PNG.
    #[arg(long)]
    grid: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PromptSet {
    inference: Inference,
    palette: std::collections::BTreeMap<String, [f64; 3]>,
    rule: Rule,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Inference {
    num_inference_steps: usize,
    guidance_scale: f32,
    height: usize,
    width: usize,
}

#[derive(Deserialize, Clone, Copy)]
pub struct Rule {
    border: usize,
    fg_threshold: f64,
    min_fg_pixels: usize,
    center_radius: f64,
}

#[derive(Deserialize)]
struct Prompt {
    prompt: String,
    seed: u64,
    color: String,
    position: String,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Classified {
    pub color: String,
    pub position: String,
    pub fg_pixels: usize,
}

#[derive(Serialize)]
struct Outcome {
    prompt: String,
    seed: u64,
    expected: [String; 2],
    got: Classified,
}

#[derive(Serialize)]
struct Summary {
    n: usize,
    steps: usize,
    color: f64,
    position: f64,
    both: f64,
    seconds: f64,
    results: Vec<Outcome>,
}

/// numpy's median: the mean of the two middle values for an even count.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The rule of `adherence.py::classify` on an RGB image (HWC bytes).
pub fn classify(rgb: &[u8], w: usize, h: usize, rule: Rule, palette: &[(String, [f64; 3])]) -> Classified {
    let px = |x: usize, y: usize| -> [f64; 3] {
        let i = (y * w + x) * 3;
        [rgb[i] as f64, rgb[i + 1] as f64, rgb[i + 2] as f64]
    };
    let b = rule.border;
    let ring: Vec<[f64; 3]> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| x < b || x >= w - b || y < b || y >= h - b)
        .map(|(x, y)| px(x, y))
        .collect();
    let bg: [f64; 3] = std::array::from_fn(|c| median(ring.iter().map(|p| p[c]).collect()));
    let fg: Vec<(usize, usize, [f64; 3])> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| (x, y, px(x, y)))
        .filter(|(_, _, p)| (0..3).map(|c| (p[c] - bg[c]).powi(2)).sum::<f64>().sqrt() > rule.fg_threshold)
        .collect();
    let n = fg.len();
    if n < rule.min_fg_pixels {
        return Classified { color: "none".into(), position: "none".into(), fg_pixels: n };
    }
    let med: [f64; 3] = std::array::from_fn(|c| median(fg.iter().map(|(_, _, p)| p[c]).collect()));
    let dist = |p: &[f64; 3]| (0..3).map(|c| (p[c] - med[c]).powi(2)).sum::<f64>();
    let color = palette
        .iter()
        .min_by(|a, b| dist(&a.1).total_cmp(&dist(&b.1)))
        .map_or("none".to_string(), |(name, _)| name.clone());
    let cx = fg.iter().map(|(x, _, _)| (*x as f64 + 0.5) / w as f64).sum::<f64>() / n as f64;
    let cy = fg.iter().map(|(_, y, _)| (*y as f64 + 0.5) / h as f64).sum::<f64>() / n as f64;
    let (dx, dy) = (cx - 0.5, cy - 0.5);
    let position = if dx.abs().max(dy.abs()) < rule.center_radius {
        "center"
    } else if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            "left"
        } else {
            "right"
        }
    } else if dy < 0.0 {
        "top"
    } else {
        "bottom"
    };
    Classified { color, position: position.into(), fg_pixels: n }
}

pub fn run(gpu: &Gpu, a: &Args) -> Result<()> {
    let set: PromptSet = serde_json::from_slice(
        &loader::read_file(&a.prompts, 64 << 20).with_context(|| format!("reading {}", a.prompts.display()))?,
    )
    .with_context(|| format!("parsing {}", a.prompts.display()))?;
    let palette: Vec<(String, [f64; 3])> = set.palette.into_iter().collect();
    let src = super::http::open_model(&a.model);
    let mut opts = loader::LoadOptions::new(DType::F32);
    if let Some(q) = &a.quant {
        let store = webdiffusion::quant::StoreType::parse(q)?;
        opts.quant = Some(std::sync::Arc::new(webdiffusion::quant::QuantPolicy::standard(store)));
    }
    let sd = webdiffusion::pipeline::generate::StableDiffusion::load(&*src, gpu, &opts)
        .with_context(|| format!("loading {}", a.model))?;
    let scheduler = super::generate::default_scheduler(
        sd.scheduler_config.class_name.as_deref(),
        sd.scheduler_config.use_karras_sigmas,
    )?;
    let mut prompts: Vec<&Prompt> = set.prompts.iter().take(a.limit.unwrap_or(usize::MAX)).collect();
    if let Some(k) = a.count.filter(|&k| k > 0 && k < prompts.len()) {
        let all = prompts.len();
        prompts = (0..k).map(|i| prompts[i * all / k]).collect();
    }
    let n = prompts.len();
    let steps = a.steps.unwrap_or(set.inference.num_inference_steps);
    let t0 = Instant::now();
    let (mut results, mut images) = (Vec::new(), Vec::new());
    for chunk in prompts.chunks(a.batch.max(1)) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|p| Request {
                prompt: p.prompt.clone(),
                negative_prompt: Some(String::new()),
                steps,
                guidance: set.inference.guidance_scale,
                width: set.inference.width,
                height: set.inference.height,
                scheduler,
                prompt_syntax: PromptSyntax::A1111,
                eta: 0.0,
                init: None,
            })
            .collect();
        let mut rngs: Vec<NormalRng> = chunk.iter().map(|p| NormalRng::new(p.seed)).collect();
        let (done, t) = (results.len(), Instant::now());
        let mut noises: Vec<&mut dyn webdiffusion::pipeline::generate::NoiseSource> =
            rngs.iter_mut().map(|r| r as &mut dyn webdiffusion::pipeline::generate::NoiseSource).collect();
        let outs = pollster::block_on(sd.generate_batch(&reqs, &mut noises, &mut |_, _| true))?;
        eprintln!("prompts {}..{} of {n}: {:.1} s", done + 1, done + chunk.len(), t.elapsed().as_secs_f64());
        for (p, out) in chunk.iter().zip(outs) {
            let got = classify(&out.rgb, out.width, out.height, set.rule, &palette);
            if !a.json {
                let mark = |ok: bool| if ok { "ok " } else { "BAD" };
                println!(
                    "{} {} {:40} -> {:7} {:7} ({} fg px)",
                    mark(got.color == p.color),
                    mark(got.position == p.position),
                    p.prompt,
                    got.color,
                    got.position,
                    got.fg_pixels
                );
            }
            images.push(out.rgb);
            results.push(Outcome {
                prompt: p.prompt.clone(),
                seed: p.seed,
                expected: [p.color.clone(), p.position.clone()],
                got,
            });
        }
    }
    let frac = |f: &dyn Fn(&Outcome) -> bool| results.iter().filter(|r| f(r)).count() as f64 / n.max(1) as f64;
    let summary = Summary {
        n,
        steps,
        color: frac(&|r| r.got.color == r.expected[0]),
        position: frac(&|r| r.got.position == r.expected[1]),
        both: frac(&|r| r.got.color == r.expected[0] && r.got.position == r.expected[1]),
        seconds: t0.elapsed().as_secs_f64(),
        results,
    };
    if let Some(path) = &a.grid {
        let (w, h) = (set.inference.width, set.inference.height);
        let grid = grid(&images, w, h, 10);
        let cols = 10.min(images.len().max(1));
        let rows = images.len().div_ceil(10).max(1);
        let png = webdiffusion::pipeline::image::encode_png(&grid, cols * w, rows * h, None)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(rows) = gpu.profile() {
        for (label, n, t) in rows.iter().take(12) {
            eprintln!("{:>8.1} ms {:>6}x  {label}", t * 1e3, n);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{n} prompts, {steps} steps, in {:.1} s: color {:.1}%, position {:.1}%, both {:.1}%",
            summary.seconds,
            summary.color * 100.0,
            summary.position * 100.0,
            summary.both * 100.0
        );
    }
    Ok(())
}

/// Images of `w`×`h` in rows of `per_row`, white where a row is short.
fn grid(images: &[Vec<u8>], w: usize, h: usize, per_row: usize) -> Vec<u8> {
    let cols = per_row.min(images.len().max(1));
    let rows = images.len().div_ceil(per_row).max(1);
    let mut out = vec![255u8; cols * w * rows * h * 3];
    for (i, img) in images.iter().enumerate() {
        let (gx, gy) = (i % per_row, i / per_row);
        for y in 0..h {
            let dst = ((gy * h + y) * cols * w + gx * w) * 3;
            out[dst..dst + w * 3].copy_from_slice(&img[y * w * 3..(y + 1) * w * 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn palette() -> Vec<(String, [f64; 3])> {
        vec![("red".into(), [220.0, 30.0, 30.0]), ("blue".into(), [30.0, 60.0, 220.0])]
    }

    const RULE: Rule = Rule { border: 2, fg_threshold: 60.0, min_fg_pixels: 12, center_radius: 1.0 / 6.0 };

    /// A 32×32 white image with a blue square at (x0, y0) of side 6.
    fn image(x0: usize, y0: usize) -> Vec<u8> {
        let mut rgb = vec![245u8; 32 * 32 * 3];
        for y in y0..y0 + 6 {
            for x in x0..x0 + 6 {
                rgb[(y * 32 + x) * 3..][..3].copy_from_slice(&[30, 60, 220]);
            }
        }
        rgb
    }

    #[test]
    fn classifies_color_and_position() {
        let c = classify(&image(4, 13), 32, 32, RULE, &palette());
        assert_eq!(c, Classified { color: "blue".into(), position: "left".into(), fg_pixels: 36 });
        assert_eq!(classify(&image(13, 13), 32, 32, RULE, &palette()).position, "center");
        assert_eq!(classify(&image(13, 24), 32, 32, RULE, &palette()).position, "bottom");
        assert_eq!(classify(&image(13, 3), 32, 32, RULE, &palette()).position, "top");
    }

    #[test]
    fn too_few_foreground_pixels_is_none() {
        let rgb = vec![245u8; 32 * 32 * 3];
        assert_eq!(classify(&rgb, 32, 32, RULE, &palette()).color, "none");
    }

    #[test]
    fn numpy_median() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
