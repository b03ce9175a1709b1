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
                Ok(mut resp) => {
                    let partial = resp.status().as_u16() == 206;
                    match resp.body_mut().with_config().limit(u64::MAX).read_to_vec() {
                        Ok(body) => return Self::cut(body, partial, range, &url).map(Some),
                        Err(e) => e.to_string(),
                    }
                }
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

    /// The asked range of a response (a server may ignore Range and send the whole file).
    fn cut(body: Vec<u8>, partial: bool, range: Option<(u64, u64)>, url: &str) -> Result<Vec<u8>> {
        let Some((start, len)) = range else { return Ok(body) };
        let (from, want) = if partial { (0, len) } else { (start, len) };
        let end = from + want;
        if (body.len() as u64) < end {
            return Err(Error::Weights(format!("{url}: short response ({} bytes for {start}+{len})", body.len())));
        }
        Ok(body[from as usize..end as usize].to_vec())
    }
}

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
pub fn open_model(model: &str) -> Box<dyn FileSource> {
    if model.starts_with("http://") || model.starts_with("https://") {
        Box::new(HttpSource::new(model))
    } else {
        Box::new(webdiffusion::models::loader::DirSource(model.into()))
    }
}
