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
//!
//! A shard on another machine can also stop answering without failing (its server process
//! frozen: its connection stays open, its kernel still answers TCP keep-alive). Such a shard
//! carries a [`ShardWatch`]: while a call waits on the shard, a watcher thread asks the watch
//! every [`WATCH_PERIOD`] whether the server still answers, and when it does not, tells the
//! watch to cut the shard's connection, so that the shard's blocked read fails and the call
//! ends with [`Error::Shard`] naming it, the watch's reason in the message.

use std::fmt::Debug;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

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
    /// What tells whether the shard's server still answers while a call waits on it (remote
    /// shards), or `None` (local devices: their calls end on their own).
    pub watch: Option<Arc<dyn ShardWatch>>,
}

/// How often a call waiting on a watched shard asks its [`ShardWatch`] whether the shard's
/// server still answers.
pub const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// Watches a shard whose replica lives elsewhere (a remote server) while calls wait on it (see
/// the [module docs](self)).
pub trait ShardWatch: Send + Sync + Debug {
    /// `Ok` while the shard's server answers, otherwise why not (e.g. "did not answer a probe
    /// within 15 s"). It may block, for a bounded time of its own.
    ///
    /// # Errors
    /// The reason, in words, when the server does not answer.
    fn check(&self) -> std::result::Result<(), String>;

    /// Closes the shard's connections, so that its blocked reads fail and the waiting call
    /// returns. The shard stays unusable afterwards.
    fn cut(&self);
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
            watch: None,
        }
    }

    /// The shard, its calls watched by `watch` (a remote shard).
    pub fn with_watch(mut self, watch: Arc<dyn ShardWatch>) -> Self {
        self.watch = Some(watch);
        self
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.name)
            .field("device", &self.device)
            .field("watch", &self.watch)
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
    /// the outputs on the output device. A watched shard's call is watched meanwhile (see the
    /// [module docs](self)).
    ///
    /// # Shapes
    /// - `input.latents`: `[B, C, F, H, W]`
    /// - output: `[B, C_out, F, H, W]`
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let shape = input.shape()?;
        let ranges = split_batch(shape.batch, self.shards.len());
        let input = &input;
        if let [range] = ranges.as_slice()
            && self.shards[0].watch.is_none()
        {
            // One part (batch 1, or one shard) on an unwatched shard: no thread to spawn; a
            // panic still becomes the shard's error.
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
                    // The shard's thread holds `running` until it ends: the watcher stops then.
                    let (running, ended) = mpsc::channel::<()>();
                    let watcher = shard
                        .watch
                        .as_deref()
                        .map(|watch| scope.spawn(move || watch_until_ended(watch, &ended)));
                    let work = scope.spawn(move || {
                        let _running = running;
                        run_shard(shard, input, range, &self.output_device)
                    });
                    (work, watcher)
                })
                .collect();
            // Every handle is joined here, so a shard's panic comes back as its `Err` payload
            // (the scope itself does not panic).
            handles
                .into_iter()
                .zip(&self.shards)
                .map(|((work, watcher), shard)| {
                    let result = work
                        .join()
                        .unwrap_or_else(|panic| Err(shard_error(shard, panic_message(&*panic))));
                    let stopped = watcher.and_then(|w| w.join().ok().flatten());
                    match (result, stopped) {
                        // Cut by its watch: the watch's reason says more than the failed read.
                        (Err(e), Some(reason)) => Err(Error::Shard {
                            shard: shard.name.clone(),
                            reason: format!("stopped answering ({reason}); its connection was cut"),
                            source: Some(Box::new(e)),
                        }),
                        (result, _) => result,
                    }
                })
                .collect()
        });
        let outputs = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(outputs, 0))
    }
}

/// Asks `watch` every [`WATCH_PERIOD`] until `ended` disconnects (the shard's call returned);
/// when the shard's server does not answer, cuts its connection and gives the reason.
fn watch_until_ended(watch: &dyn ShardWatch, ended: &mpsc::Receiver<()>) -> Option<String> {
    loop {
        match ended.recv_timeout(WATCH_PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
        }
        if let Err(reason) = watch.check() {
            // The call may have ended while the check waited: nothing to cut then.
            if !matches!(ended.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                return None;
            }
            watch.cut();
            return Some(reason);
        }
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

    /// A remote shard's connection as the tests see it: `cut` by its watch, counting checks.
    #[derive(Debug, Default)]
    struct Line {
        cut: std::sync::Mutex<bool>,
        changed: std::sync::Condvar,
        checks: std::sync::atomic::AtomicUsize,
    }

    /// A replica whose server froze: its call waits until the connection is cut, then fails
    /// as Burn's remote client does on a closed connection (a panic).
    struct Frozen(Arc<Line>);

    impl Denoiser for Frozen {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, _: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let cut = self.0.cut.lock().unwrap();
            let (cut, _) = self
                .0
                .changed
                .wait_timeout_while(cut, Duration::from_secs(60), |cut| !*cut)
                .unwrap();
            assert!(*cut, "never cut: the watch was not asked");
            panic!("connection closed")
        }
    }

    /// A replica that works for a while (long enough to be checked twice) and then answers.
    struct Slow;

    impl Denoiser for Slow {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            std::thread::sleep(WATCH_PERIOD * 2 + Duration::from_millis(300));
            Mix { fail: None }.predict(input)
        }
    }

    #[derive(Debug)]
    struct Watch {
        line: Arc<Line>,
        answers: bool,
    }

    impl ShardWatch for Watch {
        fn check(&self) -> std::result::Result<(), String> {
            self.line
                .checks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.answers {
                true => Ok(()),
                false => Err("did not answer a probe".into()),
            }
        }
        fn cut(&self) {
            *self.line.cut.lock().unwrap() = true;
            self.line.changed.notify_all();
        }
    }

    #[test]
    fn a_watched_shard_that_stops_answering_is_cut_and_named() {
        // Two shards (the frozen one on its own thread beside a working one), and the frozen
        // one alone (batch 1: watched shards never run on the caller's thread).
        for batch in [2, 1] {
            let line = Arc::new(Line::default());
            let watch = Arc::new(Watch {
                line: line.clone(),
                answers: false,
            });
            let frozen = Shard::new("the frozen one", Device::flex(), Frozen(line.clone()))
                .with_watch(watch);
            let shards = match batch {
                2 => vec![Shard::new("a", Device::flex(), Mix { fail: None }), frozen],
                _ => vec![frozen],
            };
            let (x, cond, ts) = input_parts(batch);
            let started = std::time::Instant::now();
            let err = ShardedDenoiser::new(shards, Device::flex())
                .unwrap()
                .predict(DenoiserInput::new(x, ts, cond))
                .unwrap_err();
            let (message, waited) = (err.to_string(), started.elapsed());
            println!("batch {batch}: {message} (after {waited:?})");
            assert!(matches!(err, Error::Shard { .. }), "{message}");
            assert!(message.contains("the frozen one"), "{message}");
            assert!(message.contains("did not answer a probe"), "{message}");
            // Cut at the first check, one period in (the model would wait 60 s uncut).
            assert_eq!(line.checks.load(std::sync::atomic::Ordering::SeqCst), 1);
            assert!(waited < WATCH_PERIOD * 5, "{waited:?}");
        }
    }

    #[test]
    fn a_watched_shard_that_answers_is_left_alone() {
        let line = Arc::new(Line::default());
        let watch = Arc::new(Watch {
            line: line.clone(),
            answers: true,
        });
        let (x, cond, ts) = input_parts(2);
        let one = Mix { fail: None }
            .predict(DenoiserInput::new(x.clone(), ts.clone(), cond.clone()))
            .unwrap();
        let shards = vec![
            Shard::new("a", Device::flex(), Mix { fail: None }),
            Shard::new("slow", Device::flex(), Slow).with_watch(watch),
        ];
        let split = ShardedDenoiser::new(shards, Device::flex())
            .unwrap()
            .predict(DenoiserInput::new(x, ts, cond))
            .unwrap();
        one.into_data().assert_eq(&split.into_data(), true);
        // Checked at least once while it worked (twice when the machine is idle).
        assert!(line.checks.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert!(!*line.cut.lock().unwrap(), "cut although it answered");
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
