//! When the kernels run and on which threads: [`enabled`] (flex device, `f32`, no autodiff,
//! `VDM_NO_CPU_KERNELS` unset), the thread count of rayon's global pool ([`threads`],
//! [`gemm_threads`]), the work splitters [`chunk_len`] and [`parallel`], and [`SharedOut`],
//! the output pointer that threads writing disjoint elements share.
//!
//! Why rayon's global pool: it is the one flex and gemm use (`RAYON_NUM_THREADS` sets its
//! size), so the kernels start no threads per call and do not oversubscribe the cores.

use std::ops::Range;

use burn::tensor::{DType, Device};

/// Whether the fused kernels apply to tensors of `dtype` on `device`
/// ([`vdm_core::host::cpu_kernels`]: the flex device, `f32`, no autodiff, and
/// `VDM_NO_CPU_KERNELS` unset or `0`).
pub fn enabled(device: &Device, dtype: DType) -> bool {
    vdm_core::host::cpu_kernels(device, dtype)
}

/// Threads used by the kernels: those of rayon's global pool (as flex and gemm), i.e.
/// `RAYON_NUM_THREADS` if set, else all cores.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Threads for each GEMM when `items` work items already run in parallel: one when there is
/// an item per thread, else all of them.
pub fn gemm_threads(items: usize) -> usize {
    if items >= threads() { 1 } else { threads() }
}

/// The length of the contiguous chunks that split `len` elements over the kernel threads: up
/// to [`threads`] chunks and at most `most_chunks` (the caller's bound from the work per
/// element); `None` when one chunk would do (then the caller stays on its own thread, which
/// costs no hand-over to the pool).
pub fn chunk_len(len: usize, most_chunks: usize) -> Option<usize> {
    let chunks = threads().min(most_chunks).min(len);
    (chunks > 1).then(|| len.div_ceil(chunks))
}

/// Runs `f` over contiguous ranges of `0..items` on up to [`threads`] threads of rayon's
/// global pool; `cost` (≈ floating-point operations in total) keeps small jobs on the calling
/// thread.
pub fn parallel(items: usize, cost: usize, f: impl Fn(Range<usize>) + Sync) {
    const MIN_COST_PER_THREAD: usize = 1 << 18;
    let Some(per) = chunk_len(items, cost / MIN_COST_PER_THREAD) else {
        f(0..items);
        return;
    };
    // Rayon's global pool (the one flex and gemm use): no threads are started per call.
    use rayon::prelude::*;
    (0..items.div_ceil(per))
        .into_par_iter()
        .for_each(|t| f(t * per..((t + 1) * per).min(items)));
}

/// A raw output pointer shared by threads that write disjoint elements (every user writes
/// each output element from exactly one thread).
#[derive(Clone, Copy)]
pub struct SharedOut(
    /// The start of the output buffer.
    pub *mut f32,
);
// SAFETY: every kernel (and every caller of these kernels) writes each output element from
// exactly one thread, and the buffer outlives the scoped threads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer to element `i` (a method, so that closures capture the whole wrapper).
    ///
    /// # Safety
    /// `i` lies inside the buffer (writing through the pointer further needs that no other
    /// thread writes the same element).
    #[inline(always)]
    pub unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps `i` inside the buffer.
        unsafe { self.0.add(i) }
    }
}
