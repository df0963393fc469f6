//! Differentiable fused ops with hand-written backward passes (candle's own fused ops drop gradients).
//!
//! CONTRACT: every op here has a forward and a backward, agrees with the composed candle version, and is
//! checked by finite differences in f64. Used on the training path of `model`.
