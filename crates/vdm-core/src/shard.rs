//! One denoiser spread over several Burn devices: [`ShardedDenoiser`] splits every model call
//! along the batch (classifier-free guidance's unconditional and conditional halves, several
//! videos at once) and runs the parts at the same time, one replica of the model per device.
//!
//! Why the batch: every video diffusion UNet treats batch items independently (GroupNorm,
//! attention and convolutions never mix them), so the split is exact: each device computes
//! the very numbers one device would have for its items, and a sampler, a guidance scale or a
//! long-video hook (FreeNoise windows, FreeLong, cross-frame attention) above it sees one
//! model. Splitting frames instead would cut through the temporal layers.
//!
//! Devices are any Burn [`Device`]s: several local ones (GPUs, or two CPU backends) or remote
//! ones served by Burn's remote backend (the facade's `remote` feature). Inputs move to each
//! shard's device and the outputs back to [`ShardedDenoiser`]'s output device with Burn's
//! `to_device`. A shard that fails (its error, or a panic such as the remote backend's on a
//! lost connection) stops the call with [`Error::Shard`] naming it; the other shards' work of
//! that call is discarded, nothing else is touched.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Device, Tensor};

use crate::denoiser::{BlockConditioning, Conditioning, Denoiser, DenoiserInput, Timesteps};
use crate::error::panic_message;
use crate::{Error, PredictionType, Result};

/// One replica of a model and the device it runs on.
pub struct Shard {
    /// How errors name this shard (e.g. `ws://10.0.0.2:3000` or `cuda:1`).
    pub name: String,
    /// The device of the replica's weights: its inputs are moved there.
    pub device: Device,
    /// The replica, its weights on [`Shard::device`].
    pub model: Box<dyn Denoiser + Send + Sync>,
}

impl Shard {
    /// A shard named `name`.
    pub fn new(
        name: impl Into<String>,
        device: Device,
        model: impl Denoiser + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            device,
            model: Box::new(model),
        }
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.name)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A [`Denoiser`] whose calls are split along the batch over [`Shard`]s that run at the same
/// time (see the [module docs](self)).
///
/// A call of batch `B` uses the first `min(B, shards)` shards, giving each `⌊B/n⌋` or
/// `⌈B/n⌉` consecutive items (the first ones the larger parts); with classifier-free guidance
/// (`B = 2`) two shards take one half each.
#[derive(Debug)]
pub struct ShardedDenoiser {
    shards: Vec<Shard>,
    output_device: Device,
}

impl ShardedDenoiser {
    /// Spreads calls over `shards`; outputs are gathered on `output_device` (where the sampler
    /// keeps its latents).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`shards`) when there are none, or when their prediction
    /// types differ (they must be replicas of one model).
    pub fn new(shards: Vec<Shard>, output_device: Device) -> Result<Self> {
        let Some(first) = shards.first() else {
            return Err(Error::InvalidConfig {
                field: "shards".into(),
                reason: "at least one shard is needed".into(),
            });
        };
        let prediction = first.model.prediction_type();
        if let Some(other) = shards
            .iter()
            .find(|s| s.model.prediction_type() != prediction)
        {
            return Err(Error::InvalidConfig {
                field: "shards".into(),
                reason: format!(
                    "`{}` predicts {:?} but `{}` predicts {:?}: shards must be replicas of one \
                     model",
                    other.name,
                    other.model.prediction_type(),
                    first.name,
                    prediction
                ),
            });
        }
        Ok(Self {
            shards,
            output_device,
        })
    }

    /// The shards, in the order batch items are dealt to them.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Where outputs are gathered.
    pub fn output_device(&self) -> &Device {
        &self.output_device
    }
}

/// `0..items` split into `min(items, parts)` consecutive ranges whose lengths differ by at most
/// one, the longer ones first.
pub fn split_batch(items: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.min(items).max(1);
    let (base, extra) = (items / parts, items % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

impl Denoiser for ShardedDenoiser {
    fn prediction_type(&self) -> PredictionType {
        self.shards[0].model.prediction_type()
    }

    /// Runs each shard's part of the batch on its own thread and device, then concatenates
    /// the outputs on the output device.
    ///
    /// # Shapes
    /// - `input.latents`: `[B, C, F, H, W]`
    /// - output: `[B, C_out, F, H, W]`
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let shape = input.shape()?;
        let ranges = split_batch(shape.batch, self.shards.len());
        let input = &input;
        if let [range] = ranges.as_slice() {
            // One part (batch 1, or one shard): no thread to spawn; a panic still becomes the
            // shard's error.
            let shard = &self.shards[0];
            return catch_unwind(AssertUnwindSafe(|| {
                run_shard(shard, input, range.clone(), &self.output_device)
            }))
            .unwrap_or_else(|panic| Err(shard_error(shard, panic_message(&*panic))));
        }
        let results: Vec<Result<Tensor<5>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .shards
                .iter()
                .zip(&ranges)
                .map(|(shard, range)| {
                    let range = range.clone();
                    scope.spawn(move || run_shard(shard, input, range, &self.output_device))
                })
                .collect();
            // Every handle is joined here, so a shard's panic comes back as its `Err` payload
            // (the scope itself does not panic).
            handles
                .into_iter()
                .zip(&self.shards)
                .map(|(handle, shard)| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| Err(shard_error(shard, panic_message(&*panic))))
                })
                .collect()
        });
        let outputs = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(outputs, 0))
    }
}

/// Shard `shard`'s part `range` of `input`: moved to its device, predicted, and the output
/// moved to `home`.
fn run_shard(
    shard: &Shard,
    input: &DenoiserInput<'_>,
    range: Range<usize>,
    home: &Device,
) -> Result<Tensor<5>> {
    let device = &shard.device;
    let items = (range.start, range.end);
    let mut call = DenoiserInput::new(
        input
            .latents
            .clone()
            .narrow(0, range.start, range.len())
            .to_device(device),
        timestep_items(&input.timesteps, items),
        conditioning_items(&input.conditioning, items, device),
    )
    .with_temporal(input.temporal)
    .with_cross_frame(input.cross_frame);
    if let Some(BlockConditioning {
        conditioning,
        blocks,
    }) = &input.block_conditioning
    {
        call =
            call.with_block_conditioning(conditioning_items(conditioning, items, device), blocks);
    }
    let output = shard.model.predict(call).map_err(|e| Error::Shard {
        shard: shard.name.clone(),
        reason: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    // Moving the output here (a read, for a remote device) makes a lost device fail on this
    // shard's thread, where it is named, not later on the sampler's.
    Ok(output.to_device(home))
}

/// The timesteps of batch items `start..end`.
fn timestep_items(timesteps: &Timesteps, (start, end): (usize, usize)) -> Timesteps {
    match timesteps {
        Timesteps::Shared(t) => Timesteps::Shared(*t),
        Timesteps::PerItem(values) => Timesteps::PerItem(values[start..end].to_vec()),
        Timesteps::PerFrame { frames, values } => Timesteps::PerFrame {
            frames: *frames,
            values: values[start * frames..end * frames].to_vec(),
        },
    }
}

/// The conditioning of batch items `start..end`, on `device`.
fn conditioning_items(
    conditioning: &Conditioning,
    (start, end): (usize, usize),
    device: &Device,
) -> Conditioning {
    match conditioning {
        Conditioning::None => Conditioning::None,
        Conditioning::Shared(ctx) => {
            Conditioning::Shared(ctx.clone().narrow(0, start, end - start).to_device(device))
        }
        Conditioning::PerFrame(ctx) => {
            Conditioning::PerFrame(ctx.clone().narrow(0, start, end - start).to_device(device))
        }
    }
}

/// The error of a shard that panicked (its backend's panic, e.g. a lost remote connection).
fn shard_error(shard: &Shard, reason: String) -> Error {
    Error::Shard {
        shard: shard.name.clone(),
        reason,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{SeededNoise, draw};
    use proptest::prelude::*;

    /// A "model" whose output depends on each item's latents, timestep and conditioning, and
    /// that fails or panics on request.
    struct Mix {
        fail: Option<&'static str>,
    }

    impl Denoiser for Mix {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            match self.fail {
                Some("error") => return Err(Error::Unsupported("this shard always fails".into())),
                Some(_) => panic!("this shard always panics"),
                None => {}
            }
            let shape = input.shape()?;
            let ts = input.timesteps.per_frame(shape.batch, shape.frames)?;
            let t = Tensor::<1>::from_floats(
                ts.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(),
                &input.latents.device(),
            )
            .reshape([shape.batch, 1, shape.frames, 1, 1]);
            let ctx = input
                .conditioning
                .per_frame(shape.batch, shape.frames)?
                .expect("conditioned")
                .mean_dim(2)
                .mean_dim(1)
                .reshape([shape.batch, 1, shape.frames, 1, 1]);
            Ok(input.latents.mul_scalar(2.0) + t + ctx)
        }
    }

    fn input_parts(batch: usize) -> (Tensor<5>, Conditioning, Timesteps) {
        let device = Device::flex();
        let mut noise = SeededNoise::new(3);
        let x: Tensor<5> = draw(&mut noise, [batch, 2, 3, 2, 2], &device).unwrap();
        let ctx: Tensor<4> = draw(&mut noise, [batch, 3, 4, 5], &device).unwrap();
        let ts = (0..batch * 3).map(|i| 10.0 * i as f64).collect();
        (
            x,
            Conditioning::PerFrame(ctx),
            Timesteps::PerFrame {
                frames: 3,
                values: ts,
            },
        )
    }

    fn sharded(n: usize, fail: Option<&'static str>) -> ShardedDenoiser {
        let mut shards: Vec<Shard> = (0..n)
            .map(|i| Shard::new(format!("flex-{i}"), Device::flex(), Mix { fail: None }))
            .collect();
        if let Some(kind) = fail {
            shards[n - 1] = Shard::new("the broken one", Device::flex(), Mix { fail: Some(kind) });
        }
        ShardedDenoiser::new(shards, Device::flex()).unwrap()
    }

    #[test]
    fn sharded_calls_give_the_single_model_output() {
        for (batch, shards) in [(1, 2), (2, 2), (3, 2), (5, 3), (4, 1)] {
            let (x, cond, ts) = input_parts(batch);
            let one = Mix { fail: None }
                .predict(DenoiserInput::new(x.clone(), ts.clone(), cond.clone()))
                .unwrap();
            let split = sharded(shards, None)
                .predict(
                    DenoiserInput::new(x, ts, cond.clone())
                        .with_block_conditioning(cond, &[crate::BlockKind::Decoder]),
                )
                .unwrap();
            one.into_data().assert_eq(&split.into_data(), true);
        }
    }

    #[test]
    fn a_failing_or_panicking_shard_is_an_error_naming_it() {
        // One shard runs on the caller's thread, two on their own: both paths name the shard.
        for (kind, shards) in [("error", 1), ("panic", 1), ("error", 2), ("panic", 2)] {
            let (x, cond, ts) = input_parts(2);
            let err = sharded(shards, Some(kind))
                .predict(DenoiserInput::new(x, ts, cond))
                .unwrap_err();
            let message = err.to_string();
            assert!(message.contains("the broken one"), "{message}");
            assert!(message.contains("always"), "{message}");
            // The model's own error is kept as the source; a panic has none.
            let Error::Shard { source, .. } = err else {
                panic!("not a shard error: {message}")
            };
            match kind {
                "error" => assert!(
                    matches!(source.as_deref(), Some(Error::Unsupported(_))),
                    "{source:?}"
                ),
                _ => assert!(source.is_none(), "{source:?}"),
            }
        }
    }

    #[test]
    fn no_shards_or_mixed_predictions_are_refused() {
        let err = ShardedDenoiser::new(Vec::new(), Device::flex()).unwrap_err();
        assert!(err.to_string().contains("shards"), "{err}");
        struct V;
        impl Denoiser for V {
            fn prediction_type(&self) -> PredictionType {
                PredictionType::VPrediction
            }
            fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
                Ok(input.latents)
            }
        }
        let shards = vec![
            Shard::new("a", Device::flex(), Mix { fail: None }),
            Shard::new("b", Device::flex(), V),
        ];
        let err = ShardedDenoiser::new(shards, Device::flex()).unwrap_err();
        assert!(err.to_string().contains("`b` predicts"), "{err}");
    }

    proptest! {
        #[test]
        fn batch_splits_cover_every_item_once_and_balance(items in 0usize..40, parts in 1usize..9) {
            let ranges = split_batch(items, parts);
            prop_assert_eq!(ranges.len(), parts.min(items).max(1));
            let mut next = 0;
            for r in &ranges {
                prop_assert_eq!(r.start, next);
                next = r.end;
            }
            prop_assert_eq!(next, items);
            let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
            let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            prop_assert!(max - min <= 1);
            prop_assert!(lens.windows(2).all(|w| w[0] >= w[1]));
        }
    }
}
