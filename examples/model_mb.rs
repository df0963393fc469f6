//! Micro-benchmark: candle matmul layouts for generation-size products (few rows × a weight matrix).
//! `RAYON_NUM_THREADS=1 cargo run --release --example model_mb`
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(m, k, n) in &[
        (8usize, 576usize, 1536usize),
        (32, 576, 1536),
        (8, 576, 49152),
        (8, 1536, 576),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let wt = w.t()?.contiguous()?;
        let reps = 200;
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<f64> {
            f()?;
            let t0 = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            Ok(t0.elapsed().as_secs_f64() / reps as f64 * 1e6)
        };
        let a = time(&|| x.matmul(&w.t()?))?;
        let b = time(&|| x.matmul(&wt))?;
        let c = time(&|| w.matmul(&x.t()?))?;
        let xt = x.t()?.contiguous()?;
        let d = time(&|| w.matmul(&xt))?;
        println!("m={m} k={k} n={n}: x@w.t() {a:.0} us, x@wt {b:.0} us, w@x.t() {c:.0} us, w@xt(contig) {d:.0} us; GB/s (x@wt) {:.1}", (n*k*4) as f64 / b / 1e3);
    }
    Ok(())
}
