//! When the kernels run and on which threads: [`enabled`] (flex device, `f32`, no autodiff,
//! `VDM_NO_CPU_KERNELS` unset), the thread count of rayon's global pool ([`threads`],
//! [`gemm_threads`]), the work splitter [`parallel`] and [`SharedOut`], the output pointer
//! that threads writing disjoint elements share.
//!
//! Why rayon's global pool: it is the one flex and gemm use (`RAYON_NUM_THREADS` sets its
//! size), so the kernels start no threads per call and do not oversubscribe the cores.

use std::ops::Range;

use burn::tensor::{DType, Device};

/// Whether the fused kernels apply to tensors of `dtype` on `device`
/// ([`vdm_core::host::cpu_kernels`]).
pub(crate) fn enabled(device: &Device, dtype: DType) -> bool {
    #[cfg(test)]
    if tests::FORCE_BURN.with(|f| f.get()) {
        return false;
    }
    vdm_core::host::cpu_kernels(device, dtype)
}

/// Threads used by the kernels: those of rayon's global pool (as flex and gemm), i.e.
/// `RAYON_NUM_THREADS` if set, else all cores.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// Threads for each GEMM when `items` work items already run in parallel: one when there is
/// an item per thread, else all of them.
pub(crate) fn gemm_threads(items: usize) -> usize {
    if items >= threads() { 1 } else { threads() }
}

/// Runs `f` over contiguous ranges of `0..items` on up to [`threads`] threads of rayon's
/// global pool; `cost` (≈ floating-point operations in total) keeps small jobs on the calling
/// thread.
pub(crate) fn parallel(items: usize, cost: usize, f: impl Fn(Range<usize>) + Sync) {
    const MIN_COST_PER_THREAD: usize = 1 << 18;
    let threads = threads().min(items).min(cost / MIN_COST_PER_THREAD).max(1);
    if threads == 1 {
        f(0..items);
        return;
    }
    let per = items.div_ceil(threads);
    // Rayon's global pool (the one flex and gemm use): no threads are started per call.
    use rayon::prelude::*;
    (0..threads).into_par_iter().for_each(|t| {
        let range = (t * per).min(items)..((t + 1) * per).min(items);
        if !range.is_empty() {
            f(range);
        }
    });
}

/// A raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every kernel below writes each output element from exactly one thread, and the
// buffer outlives the scoped threads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer to element `i` (a method, so that closures capture the whole wrapper).
    #[inline(always)]
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer.
        unsafe { self.0.add(i) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    thread_local! {
        /// Makes [`enabled`](super::enabled) answer `false` on this thread (the plain Burn
        /// reference path).
        pub(crate) static FORCE_BURN: Cell<bool> = const { Cell::new(false) };
    }
}
