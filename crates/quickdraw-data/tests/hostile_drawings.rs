//! Hostile drawings through the one preprocessing path (`features::preprocess`, as the server and
//! `convert` run it): memory is measured with a counting allocator, so the bound is structural,
//! not a timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use quickdraw_data::features::{FeatureSpec, preprocess};
use quickdraw_data::{Ink, Stroke};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The reported attack: 199,000 raw points (with timing) alternating between far corners of a
/// 1000-px canvas, within the 200,000-point limit. The 1-px resampling of its 71.8 million px
/// used to be stored whole (1.15 GB, 1.3 GB in the server) and scanned by RDP (3.7 s of CPU).
/// The only test in this binary, so no other test's allocations are counted.
#[test]
fn zigzag_drawing_preprocesses_in_memory_linear_in_its_points() {
    let n = 199_000;
    let corner = |i: usize| if i % 2 == 0 { 0.0 } else { 1000.0 };
    let stroke = Stroke {
        x: (0..n).map(corner).collect(),
        y: (0..n).map(corner).collect(),
        t: Some((0..n).map(|i| i as f32).collect()),
    };
    let input_bytes = 3 * 4 * n;
    let ink = Ink::Strokes(vec![stroke]);
    let spec = FeatureSpec::default();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t0 = Instant::now();
    let p = preprocess(&ink, &spec).expect("a valid spec");
    let took = t0.elapsed();
    let extra = PEAK.load(Ordering::Relaxed) - before;
    eprintln!(
        "zigzag of {n} points: {extra} bytes at peak beyond the input's {input_bytes}, {took:?}"
    );
    // Arc lengths and segment starts take 16 bytes per point, the f64 copies of the points 48
    // (with growth slack, up to 96); 128 bytes per point is 1/45 of what the stored resampling
    // took (5.8 kB per point).
    assert!(extra <= 128 * n, "{extra} bytes at peak for {n} points");
    // The zigzag is one diagonal line: it must still be drawn, as a line.
    assert!(p.image.iter().any(|&v| v == 255));
}
