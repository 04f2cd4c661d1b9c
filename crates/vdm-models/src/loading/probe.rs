//! The layout probe: burn-store's `PyTorchToBurnAdapter` and `FloatCastAdapter`, recording
//! for each tensor the module type and whether it was transposed ([`LayoutProbe`]), and the
//! way back from a model parameter to the file key it was loaded from ([`source_key`]), so
//! that shape errors are stated in the file's layout and keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleContext, PyTorchToBurnAdapter};
use burn::tensor::FloatDType;

/// The container type burn's `#[derive(Module)]` gives `burn::nn::Linear`; the only module
/// whose 2-D `weight` `PyTorchToBurnAdapter` transposes.
const LINEAR_CONTAINER: &str = "Struct:Linear";

/// The file key a model parameter was loaded from: its own path, or for a norm layer the
/// PyTorch name (`weight` for `gamma`), mapped back through the remaps.
pub(super) fn source_key(
    path: &str,
    record: &ProbeRecord,
    original_of: &HashMap<String, String>,
) -> Option<String> {
    if let Some(original) = original_of.get(path) {
        return Some(original.clone());
    }
    let (parent, param) = match path.rsplit_once('.') {
        Some((parent, param)) => (Some(parent), param),
        None => (None, path),
    };
    let alternative =
        PyTorchToBurnAdapter.get_alternative_param_name(param, record.module_type.as_deref()?)?;
    let alternative = match parent {
        Some(parent) => format!("{parent}.{alternative}"),
        None => alternative,
    };
    original_of.get(&alternative).cloned()
}

/// What the probe saw of one tensor on its way into the module.
#[derive(Debug, Clone)]
pub(super) struct ProbeRecord {
    /// Innermost module type holding the parameter (`Struct:Linear`, …).
    module_type: Option<String>,
    /// Whether `PyTorchToBurnAdapter` transposed it.
    pub(super) transposed: bool,
}

/// `PyTorchToBurnAdapter` followed by `FloatCastAdapter`, recording for each parameter the
/// module type and whether it was transposed, so that shape errors can be stated in the
/// file's layout and keys.
#[derive(Clone)]
pub(super) struct LayoutProbe {
    cast: FloatCastAdapter,
    records: Arc<Mutex<HashMap<String, ProbeRecord>>>,
}

impl LayoutProbe {
    pub(super) fn new(dtype: FloatDType) -> Self {
        Self {
            cast: FloatCastAdapter::to(dtype.into()),
            records: Arc::default(),
        }
    }

    pub(super) fn into_records(self) -> HashMap<String, ProbeRecord> {
        match self.records.lock() {
            Ok(mut records) => std::mem::take(&mut *records),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl ModuleAdapter for LayoutProbe {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        // The applier sets `tensor.name` to the parameter's path in the module before calling
        // the adapter. Mirror `PyTorchToBurnAdapter`'s rule for transposition.
        let module_type = ctx.module_type();
        let transposed = module_type == Some(LINEAR_CONTAINER)
            && tensor.name.rsplit('.').next() == Some("weight")
            && tensor.shape.num_dims() == 2;
        // A panic here would abort the process (burn-store guards `apply` with an
        // abort-on-unwind), so a poisoned lock is tolerated rather than unwrapped.
        let mut records = match self.records.lock() {
            Ok(records) => records,
            Err(poisoned) => poisoned.into_inner(),
        };
        records.insert(
            tensor.name.clone(),
            ProbeRecord {
                module_type: module_type.map(str::to_string),
                transposed,
            },
        );
        drop(records);
        let tensor = PyTorchToBurnAdapter.adapt(tensor, ctx);
        self.cast.adapt(tensor, ctx)
    }

    fn get_alternative_param_name(&self, param_name: &str, module_type: &str) -> Option<String> {
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, module_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}
