//! Per-layer key/value cache for generation, preallocated to a maximum length.

use engine::{ops, DType, Device, Result, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    max_len: usize,
}

impl KvCache {
    /// Room for `max_len` positions of `batch` sequences in each of `layers` layers.
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        dtype: DType,
        device: Device,
    ) -> Result<KvCache> {
        let shape = [batch, kv_heads, max_len, head_dim];
        let alloc = || Tensor::zeros(&shape, dtype, device);
        Ok(KvCache {
            keys: (0..layers).map(|_| alloc()).collect::<Result<_>>()?,
            values: (0..layers).map(|_| alloc()).collect::<Result<_>>()?,
            len: 0,
            max_len,
        })
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Stores layer `layer`'s new keys/values `[b, kv_heads, t, d]` after the cached ones
    /// and returns views of everything cached for that layer so far.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2);
        if self.len + t > self.max_len {
            return Err(engine::Error::Msg(format!(
                "KV cache full: {} cached + {t} new positions exceed its {} positions",
                self.len, self.max_len
            )));
        }
        self.keys[layer].write_slice(2, self.len, k)?;
        self.values[layer].write_slice(2, self.len, v)?;
        let n = self.len + t;
        Ok((ops::narrow(&self.keys[layer], 2, 0, n)?, ops::narrow(&self.values[layer], 2, 0, n)?))
    }

    /// Marks `t` more positions as cached (after every layer appended them).
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Forgets everything cached.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}
