//! Compute pipelines, built once per variant and cached under a typed key. The key's `Display`
//! (e.g. `matmul[f16,TRANS_B=1,BIAS=1]`) is also the shader and pipeline label, so validation
//! errors and GPU captures name the exact variant.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::dtype::DType;
use super::layout::LaunchLayout;
use super::preprocess::preprocess;
use crate::error::{Error, Result};

/// A WGSL source from `shaders/`, named. Each op file declares its own.
#[derive(Clone, Copy)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

impl PartialEq for Shader {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Shader {}
impl std::hash::Hash for Shader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}
impl fmt::Debug for Shader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One pipeline variant: shader, storage dtype, and preprocessor defines (sorted by the caller's
/// declaration order; each op always lists the same names in the same order).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct KernelKey {
    pub shader: Shader,
    pub dtype: DType,
    pub defines: Vec<(&'static str, u32)>,
}

impl KernelKey {
    pub fn new(shader: Shader, dtype: DType) -> Self {
        KernelKey { shader, dtype, defines: Vec::new() }
    }

    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.defines.push((name, value));
        self
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}", self.shader.name, self.dtype)?;
        for (k, v) in &self.defines {
            write!(f, ",{k}={v}")?;
        }
        f.write_str("]")
    }
}

/// A built pipeline and the bind group layout the shader declares.
pub(crate) struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
}

/// Pipelines by key, built on first use on the device it is handed.
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: HashMap<KernelKey, Arc<Compiled>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn labels(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// The pipeline of `key`, built now if it is not cached. `shader_f16`: whether the device
    /// was opened with the feature (an f16 key fails without it). `launch` is what the caller
    /// passes it; natively a new variant is refused unless its WGSL declares just that.
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        shader_f16: bool,
        key: &KernelKey,
        launch: &LaunchLayout,
    ) -> Result<Arc<Compiled>> {
        if let Some(c) = self.map.get(key) {
            return Ok(c.clone());
        }
        let f16 = key.dtype == DType::F16;
        if f16 && !shader_f16 {
            return Err(Error::MissingFeature("shader-f16"));
        }
        let label = key.to_string();
        let source = preprocess(&label, key.shader.source, &key.defines, f16)?;
        #[cfg(not(target_arch = "wasm32"))]
        super::layout::check(&label, &source, launch)?;
        #[cfg(target_arch = "wasm32")]
        let _ = launch;
        // An explicit layout, so the parameters' uniform can take a dynamic offset: one bind
        // group then serves every uniform slot, and is reused across steps (batch.rs).
        let buffer = |binding: u32, ty: wgpu::BufferBindingType, has_dynamic_offset: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset, min_binding_size: None },
            count: None,
        };
        let mut entries = vec![buffer(0, wgpu::BufferBindingType::Uniform, true)];
        for (i, read_only) in super::layout::storage_access(&label, &source)?.into_iter().enumerate() {
            entries.push(buffer(i as u32 + 1, wgpu::BufferBindingType::Storage { read_only }, false));
        }
        let layout = device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            // Every kernel writes its workgroup memory before reading it (each thread stores
            // its share, then a barrier), so the zero fill WebGPU does by default is wasted work
            // at every dispatch.
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: None,
        });
        let compiled = Arc::new(Compiled { pipeline, layout, label });
        self.map.insert(key.clone(), compiled.clone());
        Ok(compiled)
    }
}

/// Splits a 1-D workgroup count over x and y, since one dimension stops at 65535. Kernels
/// rebuild the linear index as `wg.x + wg.y * num_workgroups.x`.
pub fn grid_1d(workgroups: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if workgroups <= MAX {
        [workgroups.max(1), 1, 1]
    } else {
        let y = workgroups.div_ceil(MAX);
        [workgroups.div_ceil(y), y, 1]
    }
}
