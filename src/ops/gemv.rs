//! `x Wᵀ` for a handful of rows (generation's decoding steps) on CPUs with AVX-512.
//!
//! A decoding step multiplies a few activation rows by every weight matrix, so it is bound by streaming the weights
//! from memory. gemm's kernels tile the few rows into blocks of six and reach about a quarter of the machine's
//! bandwidth here; this kernel reads each weight row once, forms all the rows' dot products with it while it is in
//! L1, and spreads blocks of weight rows over rayon.

use super::SendPtr;
use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

/// Most activation rows the kernel takes (measured: from 12 rows on, gemm is as fast; at 32 it is faster).
pub(crate) const MAX_ROWS: usize = 8;

/// Weight rows per rayon task.
const BLOCK: usize = 64;

/// `x (n, k) · Wᵀ` for `W (o, k)` when the kernel applies (CPU, f32, contiguous, `n ≤ MAX_ROWS`, AVX-512
/// available); `None` otherwise, for the caller's general path.
pub(crate) fn small_rows_xwt(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return Ok(None);
        }
        let (n, k) = x.dims2()?;
        let (o, k2) = w.dims2()?;
        if n == 0 || n > MAX_ROWS || k != k2 || !x.device().is_cpu() {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(xd)), Storage::Cpu(CpuStorage::F32(wd))) = (&*xs, &*ws)
        else {
            return Ok(None);
        };
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Ok(None);
        };
        let mut y = vec![0f32; n * o];
        small_rows_into(&xd[xa..xb], n, k, &wd[wa..wb], o, &mut y);
        drop((xs, ws));
        return Ok(Some(Tensor::from_vec(y, (n, o), &Device::Cpu)?));
    }
    #[allow(unreachable_code)]
    {
        let _ = (x, w);
        Ok(None)
    }
}

/// `y (n, o) = x (n, k) · Wᵀ` on host slices when the kernel applies (`n ≤ MAX_ROWS`, AVX-512); returns whether it
/// ran (`false`: nothing written, use gemm).
pub(crate) fn small_rows_into(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    o: usize,
    y: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if n == 0 || n > MAX_ROWS || !std::arch::is_x86_feature_detected!("avx512f") {
            return false;
        }
        // SAFETY: AVX-512F was detected above.
        unsafe { blocks(x, n, k, w, o, y) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, n, k, w, o, y);
        false
    }
}

/// Whether [`f16_rows_into`] runs on this CPU (x86-64 with AVX-512F).
pub(crate) fn f16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y (n, o) = x (n, k) · Wᵀ` for f16 weights `W (o, k)`, widened to f32 in registers (f32 products and sums), any
/// `n` (in groups of 8 rows over each block of weight rows, which stays in cache); returns whether it ran
/// (`false`: no AVX-512, nothing written). Half the bytes of the f32 kernel, for memory-bound decoding steps.
pub(crate) fn f16_rows_into(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[half::f16],
    o: usize,
    y: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if n == 0 || !f16_available() {
            return false;
        }
        // SAFETY: AVX-512F was detected above.
        unsafe { blocks(x, n, k, w, o, y) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, n, k, w, o, y);
        false
    }
}

/// Spreads `y = x Wᵀ` over rayon tasks of `BLOCK` weight rows each.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
unsafe fn blocks<T: avx512::Weight + Sync>(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[T],
    o: usize,
    y: &mut [f32],
) {
    assert!(x.len() >= n * k && w.len() >= o * k && y.len() >= n * o);
    let yp = SendPtr(y.as_mut_ptr());
    (0..o.div_ceil(BLOCK)).into_par_iter().for_each(|blk| {
        let (o0, o1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(o));
        // SAFETY: AVX-512F is available (the caller's contract); the slices hold n·k, o·k and n·o values
        // (asserted); this task writes only columns o0..o1 of y.
        unsafe { avx512::rows(x, n, k, w, o0, o1, yp.get(), o) };
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// A weight element type the kernel widens to 16 f32 lanes.
    pub(super) trait Weight: Copy {
        /// Lanes `p[0..16]` as f32.
        ///
        /// # Safety
        /// AVX-512F must be available and `p` must point at 16 readable values.
        unsafe fn load16(p: *const Self) -> __m512;
        /// Zero, read as f32 (to pad a tail).
        fn zero() -> Self;
    }

    impl Weight for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        fn zero() -> Self {
            0.0
        }
    }

    impl Weight for half::f16 {
        #[inline(always)]
        unsafe fn load16(p: *const half::f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        fn zero() -> Self {
            half::f16::ZERO
        }
    }

    /// `y[b, j] = x[b] · W[j]` for `j` in `o0..o1`, all `n` rows of x (`y` has `o` columns).
    ///
    /// # Safety
    /// AVX-512F must be available; `x` holds `n·k` values, `w` at least `o1·k`, `y` points at `n·o` values.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows<T: Weight>(
        x: &[f32],
        n: usize,
        k: usize,
        w: &[T],
        o0: usize,
        o1: usize,
        y: *mut f32,
        o: usize,
    ) {
        let mut b0 = 0;
        while b0 < n {
            let xs = &x[b0 * k..];
            let yb = y.add(b0 * o);
            match n - b0 {
                1 => dots::<1, T>(xs, k, w, o0, o1, yb, o),
                2 => dots::<2, T>(xs, k, w, o0, o1, yb, o),
                3 => dots::<3, T>(xs, k, w, o0, o1, yb, o),
                4 => dots::<4, T>(xs, k, w, o0, o1, yb, o),
                5 => dots::<5, T>(xs, k, w, o0, o1, yb, o),
                6 => dots::<6, T>(xs, k, w, o0, o1, yb, o),
                7 => dots::<7, T>(xs, k, w, o0, o1, yb, o),
                _ => dots::<8, T>(xs, k, w, o0, o1, yb, o),
            }
            b0 += 8;
        }
    }

    /// [`rows`] for exactly `N` (≤ 8) rows of x, one 16-lane accumulator per row.
    #[target_feature(enable = "avx512f")]
    unsafe fn dots<const N: usize, T: Weight>(
        x: &[f32],
        k: usize,
        w: &[T],
        o0: usize,
        o1: usize,
        y: *mut f32,
        o: usize,
    ) {
        let full = k / 16;
        let tail = k % 16;
        let mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
        let xp = x.as_ptr();
        for j in o0..o1 {
            let wr = w.as_ptr().add(j * k);
            let mut acc = [_mm512_setzero_ps(); N];
            for c in 0..full {
                let wv = T::load16(wr.add(c * 16));
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(b * k + c * 16)), *a);
                }
            }
            if tail > 0 {
                let mut pad = [T::zero(); 16];
                pad[..tail].copy_from_slice(&w[j * k + full * 16..j * k + k]);
                let wv = T::load16(pad.as_ptr());
                for (b, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, xp.add(b * k + full * 16));
                    *a = _mm512_fmadd_ps(wv, xv, *a);
                }
            }
            for (b, a) in acc.iter().enumerate() {
                *y.add(b * o + j) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The f16 kernel against the f32 one on the same (f16-rounded) weights, for row counts beyond 8 and tails.
    #[test]
    fn f16_weights_match_f32_kernel_on_rounded_weights() {
        if !f16_available() {
            return;
        }
        for &k in &[16usize, 37, 576] {
            for n in [1usize, 3, 8, 9, 20, 32] {
                let o = 2 * BLOCK + 5;
                let x = det(n * k, 7);
                let w16: Vec<half::f16> = det(o * k, 11)
                    .iter()
                    .map(|&v| half::f16::from_f32(v))
                    .collect();
                let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
                let mut got = vec![0f32; n * o];
                assert!(f16_rows_into(&x, n, k, &w16, o, &mut got));
                let mut want = vec![0f64; n * o];
                for b in 0..n {
                    for j in 0..o {
                        want[b * o + j] = (0..k)
                            .map(|i| x[b * k + i] as f64 * w32[j * k + i] as f64)
                            .sum();
                    }
                }
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "k {k} n {n}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// Against candle's matmul for every row count it takes, head widths with and without a 16-lane tail, and an
    /// output count that is not a multiple of the task block.
    #[test]
    fn matches_candle_matmul() {
        let avx512 = {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        for &k in &[16usize, 37, 576] {
            for n in 1..=MAX_ROWS + 1 {
                let o = 2 * BLOCK + 5;
                let x = Tensor::from_vec(det(n * k, 7), (n, k), &Device::Cpu).unwrap();
                let w = Tensor::from_vec(det(o * k, 11), (o, k), &Device::Cpu).unwrap();
                let got = small_rows_xwt(&x, &w).unwrap();
                if !avx512 || n > MAX_ROWS {
                    assert!(got.is_none());
                    continue;
                }
                let got: Vec<Vec<f32>> = got.unwrap().to_vec2().unwrap();
                let want: Vec<Vec<f32>> = x.matmul(&w.t().unwrap()).unwrap().to_vec2().unwrap();
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "k {k} n {n}: {g} vs {w}"
                    );
                }
            }
        }
        // f64 and non-CPU-f32 inputs are left to the caller
        let x = Tensor::zeros((2, 16), candle_core::DType::F64, &Device::Cpu).unwrap();
        assert!(small_rows_xwt(&x, &x).unwrap().is_none());
    }
}
