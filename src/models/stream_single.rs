//! Planning the stream of a single-file checkpoint (see `ldm`, `single_file`): every tensor of
//! the file becomes the byte ranges of the diffusers tensors it holds, in file order, so the
//! streaming converter cuts a fused `in_proj` into q, k and v while its bytes pass and a browser
//! converts a 2-4 GB checkpoint into the package form without ever holding it.

use std::collections::BTreeMap;

use super::component::Component;
use super::config::{UNetConfig, VaeConfig};
use super::convert::component_accesses;
use super::header::{self, HeaderTensor};
use super::ldm::{self, Cut};
use super::single_file::{check_checkpoint, modelspec_prediction, with_prediction};
use super::weights::{Access, TensorInfo, TensorSource, Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};

/// A byte range of the file and what it becomes: a diffusers tensor of `component` (its header
/// entry renamed and cut), or, with no access, bytes no model of ours reads.
pub struct Planned {
    pub component: String,
    pub t: HeaderTensor,
    pub access: Option<Access>,
}

/// A tensor list without data, for the dry run that plans a file.
pub struct HeaderOnly(pub BTreeMap<String, TensorInfo>);

impl TensorSource for HeaderOnly {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.get(name).cloned()
    }
    fn bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        Err(Error::Tensor { name: name.into(), msg: "planning reads no data".into() })
    }
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

fn config<'f>(files: &'f BTreeMap<String, String>, path: &str, file: &str) -> Result<&'f str> {
    files
        .get(file)
        .map(String::as_str)
        .ok_or_else(|| Error::Weights(format!("{path}: the base model's {file} did not come before the checkpoint")))
}

/// The diffusers piece `cut` makes of `t`, or why the file's shape does not allow it.
fn cut_piece(path: &str, t: &HeaderTensor, name: String, cut: Cut) -> Result<HeaderTensor> {
    let mut info = t.info.clone();
    let (mut start, mut len) = (t.start, t.len);
    match cut {
        Cut::Whole => {}
        Cut::Squeeze => {
            if info.shape.len() == 4 && info.shape[2..] == [1, 1] {
                info.shape.truncate(2);
            }
        }
        Cut::Rows { index, parts } => {
            let rows = info.shape.first().copied().unwrap_or(0);
            let parts64 = parts as u64;
            if rows == 0 || parts == 0 || index >= parts || rows % parts != 0 || len % parts64 != 0 {
                return Err(Error::Tensor {
                    name: t.name.clone(),
                    msg: format!("in {path}: {rows} rows ({len} bytes) do not split into {parts} equal parts"),
                });
            }
            info.shape[0] = rows / parts;
            len /= parts64;
            start += index as u64 * len;
        }
    }
    Ok(HeaderTensor { name, info, start, len })
}

/// Plans checkpoint `path` (`size` bytes, header `json`) against the base model's configs in
/// `files`. The scheduler config in `files` gets the prediction type: `prediction` (the user's
/// choice), else the file's ModelSpec metadata, else the base model's stays.
pub fn plan(
    gpu: &Gpu,
    files: &mut BTreeMap<String, String>,
    path: &str,
    size: u64,
    json: &str,
    prediction: Option<&str>,
) -> Result<Vec<Planned>> {
    // Checked there: every byte belongs to the header or to exactly one tensor.
    let tensors = header::parse(path, json.as_bytes(), Some(size))?;
    let unet = UNetConfig::from_json(config(files, path, "unet/config.json")?)?;
    let vae = VaeConfig::from_json(config(files, path, "vae/config.json")?)?;
    let names: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
    let infos: BTreeMap<&str, &TensorInfo> = tensors.iter().map(|t| (t.name.as_str(), &t.info)).collect();
    let te = config(files, path, "text_encoder/config.json")?;
    check_checkpoint(path, &names, &|n| infos.get(n).map(|i| (*i).clone()), &unet, te, "the base model")?;
    let prediction = match prediction {
        Some(p) => Some(p.to_string()),
        None => modelspec_prediction(path, json.as_bytes())?,
    };
    if let Some(p) = prediction {
        let file = "scheduler/scheduler_config.json";
        let rewritten = with_prediction(config(files, path, file)?.as_bytes(), &p)?;
        files.insert(file.into(), String::from_utf8(rewritten).map_err(|e| Error::Weights(e.to_string()))?);
    }

    let mut plan = Vec::with_capacity(tensors.len());
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for t in tensors {
        let mut pieces = Vec::new();
        for (component, name, cut) in ldm::ldm_to_diffusers(&t.name, &unet, &vae) {
            if let Some(other) = seen.insert((component.name().into(), name.clone()), t.name.clone()) {
                return Err(Error::Weights(format!(
                    "{path}: both {other} and {} hold {component}.{name}; the checkpoint is ambiguous",
                    t.name
                )));
            }
            pieces.push(Planned {
                component: component.name().into(),
                t: cut_piece(path, &t, name, cut)?,
                access: None,
            });
        }
        if pieces.is_empty() {
            plan.push(Planned { component: String::new(), t, access: None });
            continue;
        }
        // The pieces tile the tensor in order: the stream passes each byte once.
        pieces.sort_by_key(|p| p.t.start);
        let mut at = t.start;
        for p in &pieces {
            if p.t.start != at {
                return Err(Error::Tensor { name: t.name.clone(), msg: format!("in {path}: its pieces overlap") });
            }
            at += p.t.len;
        }
        if at != t.start + t.len {
            return Err(Error::Tensor { name: t.name.clone(), msg: format!("in {path}: its pieces leave bytes over") });
        }
        plan.extend(pieces);
    }

    for component in Component::present(|p| files.contains_key(p)) {
        let source = HeaderOnly(
            plan.iter()
                .filter(|p| p.component == component.name())
                .map(|p| (p.t.name.clone(), p.t.info.clone()))
                .collect(),
        );
        let dry = Weights::dry_run(&source, gpu, DType::F32);
        let mut accesses: BTreeMap<String, Access> =
            component_accesses(component, config(files, path, &component.config_file())?, &dry)?
                .into_iter()
                .map(|a| (a.name.clone(), a))
                .collect();
        for p in plan.iter_mut().filter(|p| p.component == component.name()) {
            p.access = accesses.remove(&p.t.name);
        }
    }
    Ok(plan)
}
