//! The global allocator of the binary and the benches: mimalloc, asked for plain blocks.
//!
//! The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`, whatever
//! its alignment. mimalloc 3 serves that from its small-block fast path only after checking
//! the alignment and the block's address: ~42 instructions a call, against ~24 for
//! `mi_malloc`. A block it cannot serve there (over 1 KiB, say) whose size class is not a
//! power of two it allocates *over-sized* and marks the page as holding interior pointers,
//! so that later frees on the page take a slower path. The embedded run makes ~170
//! allocations per event (stages, runner and generator); ~8 of them took that generic path
//! and ~6 were over-sized.
//!
//! Here a request whose alignment is at most 16 bytes and at most its size (nearly all of
//! them: Rust's types rarely ask for more) goes to `mi_malloc`, `mi_zalloc` or
//! `mi_realloc`. That is the rule std's `System` allocator applies to C's `malloc`, and it
//! holds for mimalloc for the same reason: as a `malloc` it returns blocks aligned for any
//! object of that size. Its size classes up to 64 bytes are multiples of 8 and above that
//! multiples of 16, and every page's first block is 16-byte aligned, so a size that is a
//! multiple of the alignment gets a block at that alignment. Anything else still goes to
//! the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every plain mimalloc block of a size that is a multiple of it has
/// (`MI_MAX_ALIGN_SIZE`, `sizeof(max_align_t)` on the platforms we build for).
const PLAIN_ALIGN: usize = 16;

/// mimalloc through its plain calls where the alignment allows (see the module comment).
pub struct Mimalloc;

/// Whether a block of `size` bytes from the plain calls meets `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// A block for `layout` from `plain_call` where [`plain`] allows, else from `aligned_call`
/// (the two flavours of one mimalloc allocation, as `mi_malloc` and `mi_malloc_aligned`).
#[inline(always)]
unsafe fn new_block(
    layout: Layout,
    plain_call: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_call: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let block = if plain(layout.align(), layout.size()) {
        unsafe { plain_call(layout.size()) }
    } else {
        unsafe { aligned_call(layout.size(), layout.align()) }
    };
    debug_assert!((block as usize).is_multiple_of(layout.align()), "mimalloc block misaligned for {layout:?}");
    block.cast()
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// any of its calls); a block is `layout.align()`-aligned, by mimalloc's guarantee for the
// plain calls (see the module comment) or by the aligned calls otherwise.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { new_block(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { new_block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let block = if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr.cast::<c_void>(), new_size) }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()) }
        };
        debug_assert!((block as usize).is_multiple_of(layout.align()), "mimalloc block misaligned for {layout:?} grown to {new_size}");
        block.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 5,000 bytes and a sample beyond, at every alignment from 1 to 4,096
    /// that divides it, allocated, filled, grown and shrunk through [`Mimalloc`]: each block
    /// is aligned and keeps its bytes (this checks the plain calls' alignment, which the
    /// allocator relies on, against mimalloc's real size classes).
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let allocator = Mimalloc;
        let sizes = (1..=5_000).chain([8_192, 12_288, 65_536, 100_000, 1 << 20, 3 << 20]);
        let mut held = Vec::new();
        for size in sizes {
            for align in (0..=12).map(|shift| 1usize << shift).filter(|align| size % align == 0) {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    let block = unsafe { if zeroed { allocator.alloc_zeroed(layout) } else { allocator.alloc(layout) } };
                    assert!(!block.is_null(), "no block for {layout:?}");
                    assert_eq!(block as usize % align, 0, "block for {layout:?} misaligned (zeroed: {zeroed})");
                    let bytes = unsafe { std::slice::from_raw_parts_mut(block, size) };
                    if zeroed {
                        assert!(bytes.iter().all(|&b| b == 0), "zeroed block for {layout:?} holds data");
                    }
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    // Grown to the next multiple of the alignment past half again, then
                    // shrunk back: the bytes that fit stay.
                    let grown = (size + size / 2 + align) / align * align;
                    let block = unsafe { allocator.realloc(block, layout, grown) };
                    assert_eq!(block as usize % align, 0, "block for {layout:?} misaligned once grown to {grown}");
                    let kept = unsafe { std::slice::from_raw_parts(block, size) };
                    assert!(kept.iter().enumerate().all(|(i, &b)| b == i as u8), "growing {layout:?} lost bytes");
                    let grown_layout = Layout::from_size_align(grown, align).unwrap();
                    let block = unsafe { allocator.realloc(block, grown_layout, size) };
                    assert_eq!(block as usize % align, 0, "block for {layout:?} misaligned once shrunk back");
                    let kept = unsafe { std::slice::from_raw_parts(block, size) };
                    assert!(kept.iter().enumerate().all(|(i, &b)| b == i as u8), "shrinking {layout:?} lost bytes");
                    // Keep a few alive so later blocks come from partly used pages.
                    if size % 7 == 0 {
                        held.push((block, layout));
                    } else {
                        unsafe { allocator.dealloc(block, layout) };
                    }
                }
            }
        }
        for (block, layout) in held {
            unsafe { allocator.dealloc(block, layout) };
        }
    }
}
