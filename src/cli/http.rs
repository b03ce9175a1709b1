//! Model files over HTTP(S): a package or a diffusers repo on a CDN or Hugging Face
//! (`https://huggingface.co/stabilityai/sd-turbo/resolve/main/`), read with Range requests so only
//! what the loader asks for is transferred.

use std::time::Duration;

use webdiffusion::models::loader::FileSource;
use webdiffusion::{Error, Result};

pub struct HttpSource {
    base: String,
    agent: ureq::Agent,
}

impl HttpSource {
    pub fn new(base: &str) -> HttpSource {
        let base = if base.ends_with('/') { base.to_string() } else { format!("{base}/") };
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .build();
        HttpSource { base, agent: config.into() }
    }

    /// GET with up to 4 tries (back-off 0.5, 1, 2 s) on network errors and 5xx; 404 is `None`.
    fn get(&self, path: &str, range: Option<(u64, u64)>) -> Result<Option<Vec<u8>>> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=4 {
            let mut req = self.agent.get(&url);
            if let Some((start, len)) = range {
                req = req.header("Range", &format!("bytes={start}-{}", start + len - 1));
            }
            let err = match req.call() {
                Ok(mut resp) => match Self::body(&mut resp, range, &url) {
                    Ok(Ok(body)) => return Ok(Some(body)),
                    Ok(Err(refused)) => return Err(refused),
                    Err(e) => e.to_string(),
                },
                Err(ureq::Error::StatusCode(404)) => return Ok(None),
                Err(ureq::Error::StatusCode(code)) if code < 500 => {
                    return Err(Error::Weights(format!("{url}: HTTP {code}")));
                }
                Err(e) => e.to_string(),
            };
            if attempt == 4 {
                return Err(Error::Weights(format!("{url}: {err} (after {attempt} tries)")));
            }
            log::warn!("{url}: {err}; retrying in {delay:?}");
            std::thread::sleep(delay);
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// The body of a response, checked against what was asked: a 206 must carry exactly the
    /// requested range (`Content-Range`), a whole-file answer to a range is only taken for a
    /// range at the start (read no further than it), and no body is read past its bound. The
    /// outer error is a network failure (retried), the inner one a refusal.
    fn body(
        resp: &mut ureq::http::Response<ureq::Body>,
        range: Option<(u64, u64)>,
        url: &str,
    ) -> std::result::Result<Result<Vec<u8>>, ureq::Error> {
        let refuse = |msg: String| Ok(Err(Error::Weights(format!("{url}: {msg}"))));
        let Some((start, len)) = range else {
            return match resp.body_mut().with_config().limit(MAX_WHOLE).read_to_vec() {
                Err(ureq::Error::BodyExceedsLimit(_)) => refuse(format!("larger than {MAX_WHOLE} bytes")),
                r => r.map(Ok),
            };
        };
        let body = match resp.status().as_u16() {
            206 => {
                let sent = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let want = format!("bytes {start}-{}/", start + len - 1);
                if !sent.starts_with(&want) {
                    return refuse(format!(
                        "asked for bytes {start}-{}, the server sent {:?}",
                        start + len - 1,
                        if sent.is_empty() { "no Content-Range" } else { &sent }
                    ));
                }
                match resp.body_mut().with_config().limit(len).read_to_vec() {
                    Err(ureq::Error::BodyExceedsLimit(_)) => return refuse(format!("more than the {len} bytes asked")),
                    r => r?,
                }
            }
            _ if start == 0 => {
                use std::io::Read;
                let mut body = Vec::new();
                resp.body_mut().as_reader().take(len).read_to_end(&mut body).map_err(ureq::Error::Io)?;
                body
            }
            _ => {
                return refuse(
                    "the server ignores HTTP Range requests (it answers with the whole file), so every tensor \
                     would download it again; use a host with Range support or a local folder"
                        .into(),
                )
            }
        };
        if body.len() as u64 != len {
            return refuse(format!("short response ({} bytes for {start}+{len})", body.len()));
        }
        Ok(Ok(body))
    }
}

/// The largest file read whole (configs, tokenizer files, manifests are far smaller; weights are
/// read by range).
const MAX_WHOLE: u64 = 256 << 20;

impl FileSource for HttpSource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.get(path, None)
    }
    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if len == 0 {
            return Ok(self.get(path, Some((start, 1)))?.map(|_| Vec::new()));
        }
        self.get(path, Some((start, len)))
    }
    fn describe(&self) -> String {
        self.base.clone()
    }
}

/// A folder or a URL.
/// `--model` with `--config`: a single-file checkpoint (`FILE.safetensors`) seen through the
/// diffusers folder `config` names, else as `open_model`.
/// `prediction`: a single file's `epsilon` or `v_prediction`, when its shapes and metadata
/// cannot tell (SD 2 at 768 is v, at 512 epsilon).
pub fn open_model_with(
    model: &str,
    config: Option<&std::path::Path>,
    prediction: Option<&str>,
) -> anyhow::Result<Box<dyn FileSource>> {
    use anyhow::Context;
    use webdiffusion::models::loader::DirSource;
    if !model.ends_with(".safetensors") {
        anyhow::ensure!(
            prediction.is_none(),
            "--prediction-type is for single-file checkpoints (a folder's scheduler config says it)"
        );
        return Ok(open_model(model));
    }
    let config = config.context(
        "--model is a single-file checkpoint: --config names the diffusers folder whose configs, tokenizer and scheduler go with it",
    )?;
    let path = std::path::Path::new(model);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).context("--model: a file name")?;
    let mut single = webdiffusion::models::single_file::SingleFile::open(
        Box::new(DirSource(dir.to_path_buf())),
        name,
        Box::new(DirSource(config.to_path_buf())),
    )
    .with_context(|| format!("opening {model}"))?;
    if let Some(p) = prediction {
        single.set_prediction(p).context("--prediction-type")?;
    }
    Ok(Box::new(single))
}

/// `src` with its VAE read from `vae` (a folder or URL with the VAE's config.json and weights at
/// its root), when given.
pub fn with_vae(src: Box<dyn FileSource>, vae: Option<&str>) -> anyhow::Result<Box<dyn FileSource>> {
    use webdiffusion::models::component::Component;
    Ok(match vae {
        None => src,
        Some(v) => Box::new(webdiffusion::models::loader::Swapped::new(src, Component::Vae, open_model(v))?),
    })
}

pub fn open_model(model: &str) -> Box<dyn FileSource> {
    if model.starts_with("http://") || model.starts_with("https://") {
        Box::new(HttpSource::new(model))
    } else {
        Box::new(webdiffusion::models::loader::DirSource(model.into()))
    }
}
