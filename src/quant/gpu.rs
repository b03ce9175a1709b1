//! Quantized weights on the GPU: a row-repacked u32 tensor plus its format and logical shape.

use super::{pack_rows, quantize, QuantFormat, BLOCK};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuTensor};

/// A `rows` x `cols` weight matrix (nn.Linear [out, in], or a conv's [Cout, Cin*KH*KW]) in
/// q8_0/q4_0. Its storage is split over bindings by rows like any other tensor.
#[derive(Clone, Debug)]
pub struct QTensor {
    pub data: GpuTensor,
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
}

impl QTensor {
    /// From GGML blocks (a file's bytes), repacked for the GPU.
    pub fn from_blocks(gpu: &Gpu, format: QuantFormat, blocks: &[u8], rows: usize, cols: usize) -> Result<QTensor> {
        let words = pack_rows(format, blocks, rows, cols)?;
        let data = GpuTensor::from_u32(gpu, &words, &[rows, format.row_words(cols)])?;
        Ok(QTensor { data, format, rows, cols })
    }

    /// Quantizes f32 values on the CPU and uploads them.
    pub fn from_f32(gpu: &Gpu, format: QuantFormat, x: &[f32], rows: usize, cols: usize) -> Result<QTensor> {
        if cols % BLOCK != 0 || x.len() != rows * cols {
            return Err(Error::Request(format!("a {rows}x{cols} weight cannot be quantized in {BLOCK}-blocks")));
        }
        Self::from_blocks(gpu, format, &quantize(format, x)?, rows, cols)
    }
}
