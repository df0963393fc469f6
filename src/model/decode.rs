//! The decoding step of generation on host buffers: one new token per row through every layer, no tensors.
//!
//! At small sizes a decoding step through [`Transformer::forward_cached`] costs dispatch and allocation (a few dozen
//! candle ops per layer, each a fresh tensor), not arithmetic. [`DecodeState`] holds the KV cache and every scratch
//! buffer as preallocated `Vec<f32>`s and reads the weights in place, so a step allocates nothing; products go
//! through `ops::gemv` (few rows) or gemm. Same math as `forward_cached` (RMSNorm, RoPE with HF's rotate_half, GQA
//! attention over the attendable slots, SwiGLU, the LM head), in f32; the prompt is still prefilled by
//! `forward_cached`, whose cache [`DecodeState::from_cache`] takes over.

use super::transformer::{KvCache, Transformer};
use crate::ops::{gemv, mm, Mat, SendPtr};
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use half::{f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

/// KV cache and scratch of host decoding steps for a fixed batch (see the module doc).
pub struct DecodeState {
    b: usize,
    cap: usize,
    len: usize,
    /// Per layer `(B, kv_heads, cap, head_dim)`, rope'd keys.
    k: Vec<Vec<f32>>,
    /// Per layer `(B, kv_heads, cap, head_dim)` values.
    v: Vec<Vec<f32>>,
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    kn: Vec<f32>,
    vn: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cs: Vec<f32>,
    /// With [`Transformer::set_decode_f16`]: f16 copies of the projection and LM-head weights, in the order of
    /// `Transformer::weights_for_decode` (`None` for the embedding, norms and biases, which stay f32).
    w16: Option<Vec<Option<Vec<f16>>>>,
}

/// One weight matrix `(out, in)`, its bias and its LoRA adapter `(A (r, in), B (out, r), alpha/r)`, as host slices.
struct Lin<'a> {
    w: &'a [f32],
    /// The same weight in f16, when decoding reads f16 weights.
    w16: Option<&'a [f16]>,
    b: Option<&'a [f32]>,
    lora: Option<(&'a [f32], &'a [f32], f32)>,
    out: usize,
    inp: usize,
}

impl Lin<'_> {
    /// `y (n, out) = x (n, in) · Wᵀ + b`.
    fn apply(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (k, o) = (self.inp, self.out);
        let y = &mut y[..n * o];
        let done = match self.w16 {
            Some(w16) => gemv::f16_rows_into(x, n, k, w16, o, y),
            None => gemv::small_rows_into(x, n, k, self.w, o, y),
        };
        if !done {
            let par = if n * k * o >= 1 << 18 {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            };
            assert!(x.len() >= n * k && self.w.len() >= o * k);
            // SAFETY: y is (n, o) row-major, x (n, k) row-major, W (o, k) row-major read as the (k, o) matrix Wᵀ
            // (column stride k, row stride 1); the sizes are asserted above.
            unsafe {
                gemm::gemm(
                    n,
                    o,
                    k,
                    y.as_mut_ptr(),
                    1,
                    o as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    self.w.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            };
        }
        if let Some(b) = self.b {
            for row in y.chunks_mut(o) {
                row.iter_mut().zip(b).for_each(|(a, &c)| *a += c);
            }
        }
        if let Some((a, bm, s)) = self.lora {
            // y += s·(x Aᵀ)Bᵀ: r·(in + out) products per row, small next to the base's in·out
            let r = a.len() / k;
            let mut u = vec![0f32; n * r];
            assert!(x.len() >= n * k && a.len() >= r * k && bm.len() >= o * r);
            // SAFETY: x (n, k), A (r, k) read as Aᵀ, u (n, r); then u, B (o, r) read as Bᵀ, y (n, o); all row-major
            // and within the lengths asserted here and above.
            unsafe {
                let x = Mat::new(x.as_ptr(), k, 1);
                let at = Mat::new(a.as_ptr(), 1, k);
                mm(n, r, k, u.as_mut_ptr(), r, false, x, at, s);
                let um = Mat::new(u.as_ptr(), r, 1);
                let bt = Mat::new(bm.as_ptr(), 1, r);
                mm(n, o, r, y.as_mut_ptr(), o, true, um, bt, 1.0);
            }
        }
    }
}

/// Walks the host slices in the order of `Transformer::weights_for_decode` (`None`: an absent bias), with their
/// f16 copies where decoding has them.
struct Cursor<'a>(std::vec::IntoIter<HostWeight<'a>>);

/// One entry of `Transformer::weights_for_decode` on the host: its f32 data and, when decoding has one, its f16 copy.
type HostWeight<'a> = (Option<&'a [f32]>, Option<&'a [f16]>);

impl<'a> Cursor<'a> {
    fn next(&mut self) -> HostWeight<'a> {
        self.0
            .next()
            .expect("weights_for_decode lists every tensor")
    }

    fn opt(&mut self) -> Option<&'a [f32]> {
        self.next().0
    }

    fn req(&mut self) -> &'a [f32] {
        self.opt()
            .expect("weights_for_decode: a required tensor is absent")
    }

    /// A weight `(out, inp)`, its optional bias and optional LoRA `A`, `B` (scaled by `lora_scale`), with the
    /// weight's f16 copy when decoding has one.
    fn lin(&mut self, out: usize, inp: usize, lora_scale: f32) -> Lin<'a> {
        let (w, w16) = self.next();
        let b = self.opt();
        let lora = match (self.opt(), self.opt()) {
            (Some(a), Some(bm)) => Some((a, bm, lora_scale)),
            _ => None,
        };
        Lin {
            w: w.expect("weights_for_decode: a required tensor is absent"),
            w16,
            b,
            lora,
            out,
            inp,
        }
    }
}

/// f16 copies of the weight matrices of `Transformer::weights_for_decode` after the embedding (its projections
/// and LM head), converted in parallel; `None` for the embedding, norms and biases.
fn f16_copies(model: &Transformer) -> crate::Result<Vec<Option<Vec<f16>>>> {
    model
        .weights_for_decode()
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) if i > 0 && t.rank() == 2 => {
                let g = t.storage_and_layout();
                let src = host(&g).ok_or_else(|| {
                    crate::input_err!("decode step: weights are not contiguous f32 on the CPU")
                })?;
                let mut dst = vec![f16::ZERO; src.len()];
                dst.par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.convert_from_f32_slice(s));
                Ok(Some(dst))
            }
            _ => Ok(None),
        })
        .collect()
}

/// The contiguous f32 CPU data of a read-locked tensor.
fn host<'a, G: std::ops::Deref<Target = Storage>>(g: &'a (G, &Layout)) -> Option<&'a [f32]> {
    match &*g.0 {
        Storage::Cpu(CpuStorage::F32(v)) => g.1.contiguous_offsets().map(|(a, b)| &v[a..b]),
        _ => None,
    }
}

/// `y = x / sqrt(mean(x²) + eps) · w`, row by row (as candle's f32 `rms_norm`).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let d = w.len();
    for (xr, yr) in x.chunks(d).zip(y.chunks_mut(d)) {
        let ss: f32 = xr.iter().map(|a| a * a).sum();
        let m = (ss / d as f32 + eps).sqrt();
        for ((o, &a), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = a / m * g;
        }
    }
}

/// HF rotate_half RoPE in place on one head (`cs` = `[cos | sin]`), then times `scale`.
fn rope(x: &mut [f32], cs: &[f32], scale: f32) {
    let half = x.len() / 2;
    let (c, s) = cs.split_at(half);
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = (a * c[i] - b * s[i]) * scale;
        x[i + half] = (b * c[i] + a * s[i]) * scale;
    }
}

impl DecodeState {
    /// Takes over `cache` (filled by `forward_cached`) for host steps; `None` where the kernel does not apply
    /// (not CPU, not f32, or the model uses the composed reference ops).
    pub fn from_cache(model: &Transformer, cache: &KvCache) -> crate::Result<Option<Self>> {
        if !model.device().is_cpu() || model.dtype() != DType::F32 || model.reference_ops() {
            return Ok(None);
        }
        let c = &model.config;
        let (b, cap) = (cache.batch(), cache.capacity());
        let (nh, nkv, hd, d) = (
            c.num_attention_heads,
            c.num_kv_heads(),
            c.head_dim(),
            c.hidden_size,
        );
        let flat = |t: &Tensor| -> crate::Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let (ks, vs) = cache.tensors();
        let k = ks.iter().map(flat).collect::<crate::Result<_>>()?;
        let v = vs.iter().map(flat).collect::<crate::Result<_>>()?;
        let wide = d.max(nh * hd).max(c.intermediate_size);
        let w16 = if model.decode_f16() && gemv::f16_available() {
            Some(f16_copies(model)?)
        } else {
            None
        };
        Ok(Some(Self {
            b,
            cap,
            len: cache.len(),
            k,
            v,
            x: vec![0.0; b * d],
            h: vec![0.0; b * wide],
            q: vec![0.0; b * nh * hd],
            kn: vec![0.0; b * nkv * hd],
            vn: vec![0.0; b * nkv * hd],
            att: vec![0.0; b * nh * cap],
            o: vec![0.0; b * nh * hd],
            proj: vec![0.0; b * d],
            gate: vec![0.0; b * c.intermediate_size],
            up: vec![0.0; b * c.intermediate_size],
            cs: vec![0.0; b * hd],
            w16,
        }))
    }

    /// Slots filled per row.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds one token per row (`ids`, `positions`: B each) into slot `len()` and writes the next-token logits
    /// `(B, V)` row-major into `logits`. `key_mask` is `(B, capacity)` row-major: slot `s ≤ len()` of row `r` is
    /// attended when `key_mask[r·capacity + s] != 0` (a row with none attends to every slot).
    pub fn step(
        &mut self,
        model: &Transformer,
        ids: &[u32],
        positions: &[u32],
        key_mask: &[u8],
        logits: &mut Vec<f32>,
    ) -> crate::Result<()> {
        let c = &model.config;
        let (b, cap, slot) = (self.b, self.cap, self.len);
        if ids.len() != b || positions.len() != b || key_mask.len() != b * cap {
            return Err(crate::input_err!(
                "decode step: {} ids, {} positions, {} mask values for {b} rows of capacity {cap}",
                ids.len(),
                positions.len(),
                key_mask.len()
            ));
        }
        if slot >= cap {
            return Err(crate::input_err!(
                "decode step: the cache of capacity {cap} is full"
            ));
        }
        let (vocab, d, ffn) = (c.vocab_size, c.hidden_size, c.intermediate_size);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(crate::input_err!(
                "decode step: token id {bad} >= vocab_size {vocab}"
            ));
        }
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let (rep, half) = (nh / nkv, hd / 2);
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let ls = model.lora().map_or(0.0, |l| l.scale() as f32);
        let w = model.weights_for_decode();
        let guards: Vec<_> = w
            .iter()
            .map(|t| t.as_ref().map(Tensor::storage_and_layout))
            .collect();
        let mut sl = Vec::with_capacity(guards.len());
        for g in &guards {
            sl.push(match g {
                Some(g) => Some(host(g).ok_or_else(|| {
                    crate::input_err!("decode step: weights are not contiguous f32 on the CPU")
                })?),
                None => None,
            });
        }
        let halves: Vec<Option<&[f16]>> = match &self.w16 {
            Some(h) => h.iter().map(|v| v.as_deref()).collect(),
            None => vec![None; sl.len()],
        };
        let mut cur = Cursor(sl.into_iter().zip(halves).collect::<Vec<_>>().into_iter());
        let (embed, norm) = (cur.req(), cur.req());
        let head = {
            let (w, w16) = cur.next();
            Lin {
                w: w.expect("weights_for_decode: the LM head is absent"),
                w16,
                b: None,
                lora: None,
                out: vocab,
                inp: d,
            }
        };
        // RoPE angles of each row's position, in f32 as `Transformer::rope_host`.
        let (inv, af) = model.rope_freqs();
        for (r, &p) in positions.iter().enumerate() {
            let cs = &mut self.cs[r * hd..(r + 1) * hd];
            for (i, &f) in inv.iter().enumerate() {
                let a = p as f32 * f as f32;
                cs[i] = a.cos() * af as f32;
                cs[half + i] = a.sin() * af as f32;
            }
        }
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            self.x[r * d..(r + 1) * d].copy_from_slice(&embed[id * d..(id + 1) * d]);
        }
        for li in 0..c.num_hidden_layers {
            let ln1 = cur.req();
            let lq = cur.lin(nh * hd, d, ls);
            let lk = cur.lin(nkv * hd, d, ls);
            let lv = cur.lin(nkv * hd, d, ls);
            let lo = cur.lin(d, nh * hd, ls);
            let ln2 = cur.req();
            let (lg, lu, ld) = (
                cur.lin(ffn, d, ls),
                cur.lin(ffn, d, ls),
                cur.lin(d, ffn, ls),
            );
            rms_norm(&self.x, ln1, eps, &mut self.h[..b * d]);
            lq.apply(&self.h, b, &mut self.q);
            lk.apply(&self.h, b, &mut self.kn);
            lv.apply(&self.h, b, &mut self.vn);
            for r in 0..b {
                let cs = &self.cs[r * hd..(r + 1) * hd];
                for hh in 0..nh {
                    rope(&mut self.q[(r * nh + hh) * hd..][..hd], cs, scale);
                }
                for g in 0..nkv {
                    rope(&mut self.kn[(r * nkv + g) * hd..][..hd], cs, 1.0);
                    let at = ((r * nkv + g) * cap + slot) * hd;
                    let src = (r * nkv + g) * hd;
                    self.k[li][at..at + hd].copy_from_slice(&self.kn[src..src + hd]);
                    self.v[li][at..at + hd].copy_from_slice(&self.vn[src..src + hd]);
                }
            }
            let (kc, vc, q) = (&self.k[li], &self.v[li], &self.q);
            let op = SendPtr(self.o.as_mut_ptr());
            self.att
                .par_chunks_mut(cap)
                .enumerate()
                .for_each(|(rh, sc)| {
                    let (r, hh) = (rh / nh, rh % nh);
                    let base = (r * nkv + hh / rep) * cap;
                    let qv = &q[rh * hd..(rh + 1) * hd];
                    let row_mask = &key_mask[r * cap..r * cap + slot + 1];
                    let any = row_mask.iter().any(|&m| m != 0);
                    let mut mx = f32::NEG_INFINITY;
                    for (s, out) in sc[..=slot].iter_mut().enumerate() {
                        *out = if any && row_mask[s] == 0 {
                            f32::NEG_INFINITY
                        } else {
                            let kv = &kc[(base + s) * hd..(base + s + 1) * hd];
                            qv.iter().zip(kv).map(|(a, b)| a * b).sum()
                        };
                        mx = mx.max(*out);
                    }
                    let mut tot = 0f32;
                    for e in sc[..=slot].iter_mut() {
                        *e = (*e - mx).exp();
                        tot += *e;
                    }
                    // SAFETY: task rh writes only o[rh·hd .. (rh+1)·hd]; o holds B·nh·hd values.
                    let o = unsafe { std::slice::from_raw_parts_mut(op.get().add(rh * hd), hd) };
                    o.fill(0.0);
                    for (s, &p) in sc[..=slot].iter().enumerate() {
                        if p != 0.0 {
                            let p = p / tot;
                            let vv = &vc[(base + s) * hd..(base + s + 1) * hd];
                            o.iter_mut().zip(vv).for_each(|(a, &v)| *a += p * v);
                        }
                    }
                });
            lo.apply(&self.o, b, &mut self.proj);
            self.x
                .iter_mut()
                .zip(&self.proj)
                .for_each(|(a, &p)| *a += p);
            rms_norm(&self.x, ln2, eps, &mut self.h[..b * d]);
            lg.apply(&self.h, b, &mut self.gate);
            lu.apply(&self.h, b, &mut self.up);
            for (g, &u) in self.gate.iter_mut().zip(&self.up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            ld.apply(&self.gate, b, &mut self.proj);
            self.x
                .iter_mut()
                .zip(&self.proj)
                .for_each(|(a, &p)| *a += p);
        }
        rms_norm(&self.x, norm, eps, &mut self.h[..b * d]);
        logits.resize(b * vocab, 0.0);
        head.apply(&self.h, b, logits);
        self.len += 1;
        Ok(())
    }
}
