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
        assert!(x.len() >= n * k && w.len() >= o * k && y.len() >= n * o);
        let yp = SendPtr(y.as_mut_ptr());
        (0..o.div_ceil(BLOCK)).into_par_iter().for_each(|blk| {
            let (o0, o1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(o));
            // SAFETY: AVX-512F was detected above; the slices hold n·k, o·k and n·o values (asserted); this task
            // writes only columns o0..o1 of y.
            unsafe { avx512::rows(x, n, k, w, o0, o1, yp.get(), o) };
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, n, k, w, o, y);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `y[b, j] = x[b] · W[j]` for `j` in `o0..o1`, all `n` rows of x (`y` has `o` columns).
    ///
    /// # Safety
    /// AVX-512F must be available; `x` holds `n·k` values, `w` at least `o1·k`, `y` points at `n·o` values.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        x: &[f32],
        n: usize,
        k: usize,
        w: &[f32],
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
                1 => dots::<1>(xs, k, w, o0, o1, yb, o),
                2 => dots::<2>(xs, k, w, o0, o1, yb, o),
                3 => dots::<3>(xs, k, w, o0, o1, yb, o),
                4 => dots::<4>(xs, k, w, o0, o1, yb, o),
                5 => dots::<5>(xs, k, w, o0, o1, yb, o),
                6 => dots::<6>(xs, k, w, o0, o1, yb, o),
                7 => dots::<7>(xs, k, w, o0, o1, yb, o),
                _ => dots::<8>(xs, k, w, o0, o1, yb, o),
            }
            b0 += 8;
        }
    }

    /// [`rows`] for exactly `N` (≤ 8) rows of x, one 16-lane accumulator per row.
    #[target_feature(enable = "avx512f")]
    unsafe fn dots<const N: usize>(
        x: &[f32],
        k: usize,
        w: &[f32],
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
                let wv = _mm512_loadu_ps(wr.add(c * 16));
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(b * k + c * 16)), *a);
                }
            }
            if tail > 0 {
                let wv = _mm512_maskz_loadu_ps(mask, wr.add(full * 16));
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
