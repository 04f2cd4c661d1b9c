//! Whole-model operations on parameters the optimiser does not provide: the global gradient
//! norm and its clipping, dropping the gradients of frozen (non-temporal) layers, and the
//! exponential moving average of the weights.
//!
//! Burn's own `GradientClipping` clips each parameter's gradient on its own; diffusers' training
//! scripts clip the norm of all gradients together (`accelerator.clip_grad_norm_`), which
//! keeps the update's direction, so vdm does that here.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use vdm_core::Result;
use vdm_core::readback::read_f32_scalar;

/// The ids and paths of a module's float parameters.
#[derive(Default)]
struct ParamList {
    path: Vec<String>,
    entries: Vec<(ParamId, String)>,
}

impl ModuleVisitor for ParamList {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.entries.push((param.id, self.path.join(".")));
    }
}

/// Every float parameter of `module` as `(id, dotted path)`.
pub fn parameters<M: Module>(module: &M) -> Vec<(ParamId, String)> {
    let mut list = ParamList::default();
    module.visit(&mut list);
    list.entries
}

/// Sums the squares of every gradient, or scales every gradient.
struct GradPass<'a> {
    grads: &'a mut GradientsParams,
    scale: Option<f32>,
    sum_squares: f64,
    /// The first gradient that could not be read back (the visitor cannot return it).
    error: Option<vdm_core::Error>,
}

impl ModuleVisitor for GradPass<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.scale {
            None => {
                if let Some(g) = self.grads.get::<D>(param.id)
                    && self.error.is_none()
                {
                    match read_f32_scalar(g.powi_scalar(2).sum(), "a gradient's squared norm") {
                        Ok(v) => self.sum_squares += f64::from(v),
                        Err(e) => self.error = Some(e),
                    }
                }
            }
            Some(scale) => {
                if let Some(g) = self.grads.remove::<D>(param.id) {
                    self.grads.register(param.id, g.mul_scalar(scale));
                }
            }
        }
    }
}

/// The global L2 norm of the gradients, and (if `max_norm` is given and exceeded) the
/// gradients scaled to that norm, as PyTorch's `clip_grad_norm_` (scale
/// `max_norm / (norm + 1e-6)`). Returns the norm before clipping.
///
/// # Errors
/// [`vdm_core::Error::ReadBack`] when a gradient cannot be read back from its device.
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f32>,
) -> Result<f32> {
    let mut pass = GradPass {
        grads,
        scale: None,
        sum_squares: 0.0,
        error: None,
    };
    module.visit(&mut pass);
    if let Some(e) = pass.error {
        return Err(e);
    }
    let norm = pass.sum_squares.sqrt() as f32;
    if let Some(max) = max_norm {
        let scale = max / (norm + 1e-6);
        if scale < 1.0 {
            pass.scale = Some(scale);
            module.visit(&mut pass);
        }
    }
    Ok(norm)
}

/// Drops the gradients of parameters whose path contains none of the patterns.
struct KeepOnly<'a> {
    grads: &'a mut GradientsParams,
    patterns: &'a [String],
    path: Vec<String>,
    kept: usize,
}

impl ModuleVisitor for KeepOnly<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        if self.patterns.iter().any(|p| path.contains(p.as_str())) {
            self.kept += 1;
        } else {
            self.grads.remove::<D>(param.id);
        }
    }
}

/// Drops the gradients of the parameters whose path contains none of `patterns`, so the
/// optimiser leaves them (and their weight decay) untouched. Returns how many were kept.
pub fn keep_only<M: Module>(module: &M, grads: &mut GradientsParams, patterns: &[String]) -> usize {
    let mut pass = KeepOnly {
        grads,
        patterns,
        path: Vec::new(),
        kept: 0,
    };
    module.visit(&mut pass);
    pass.kept
}

/// Collects a module's parameters (flattened) by id.
#[derive(Default)]
struct Snapshot {
    values: HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.values.insert(param.id, t.reshape([n]));
    }
}

/// Moves each parameter towards the snapshot's: `ema ← decay·ema + (1 − decay)·current`.
struct EmaUpdate {
    current: Snapshot,
    decay: f32,
}

impl ModuleMapper for EmaUpdate {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.current.values.remove(&param.id) else {
            return param;
        };
        let decay = self.decay;
        param.map(|ema| {
            let shape = ema.shape();
            ema.mul_scalar(decay) + current.reshape(shape).mul_scalar(1.0 - decay)
        })
    }
}

/// One EMA update of `ema` (on the inference device) towards `model` (the same parameter ids,
/// e.g. an earlier `model.valid()`); parameters are matched by id.
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f32) -> M {
    let mut current = Snapshot::default();
    model.valid().visit(&mut current);
    ema.map(&mut EmaUpdate { current, decay })
}
