//! Images for people: grey-scale PNG encoding and decoding (the `png` image feature, TensorBoard
//! image summaries, `inspect --png`, confusion matrices) and image grids.

use std::io;

/// Encodes 8-bit pixels as PNG: `channels` 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
pub fn encode(pixels: &[u8], w: u32, h: u32, channels: u32) -> Result<Vec<u8>, png::EncodingError> {
    let color = match channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        n => {
            let what = format!("{n} channels (expected 1..=4)");
            return Err(png::EncodingError::IoError(io::Error::new(
                io::ErrorKind::InvalidInput,
                what,
            )));
        }
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        // Fast: shards hold millions of these; the size difference to the default is small.
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Grey-scale PNG of a `w * h` image held in memory.
///
/// Panics when `pixels.len() != w * h` (a programming error: callers build the buffer).
pub fn encode_grey(pixels: &[u8], w: u32, h: u32) -> Vec<u8> {
    assert_eq!(
        pixels.len(),
        w as usize * h as usize,
        "grey image buffer size"
    );
    // Into a Vec with matching dimensions, encoding cannot fail.
    encode(pixels, w, h, 1).expect("PNG into memory")
}

/// Decodes a grey-scale PNG that must be `size x size` into `size * size` bytes.
pub fn decode_grey(bytes: &[u8], size: u32) -> Result<Vec<u8>, String> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if info.width != size || info.height != size || info.color_type != png::ColorType::Grayscale {
        return Err(format!(
            "PNG is {}x{} {:?}, expected {size}x{size} Grayscale",
            info.width, info.height, info.color_type
        ));
    }
    buf.truncate(info.buffer_size());
    Ok(buf)
}

/// Tiles square grey images of side `side` into a near-square grid (1 px dark gaps); returns
/// the pixels and (width, height). Used for TensorBoard's image summaries of input batches.
pub fn tile(images: &[Vec<u8>], side: usize) -> (Vec<u8>, u32, u32) {
    let n = images.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (w, h) = (cols * (side + 1) + 1, rows * (side + 1) + 1);
    let mut px = vec![64u8; w * h];
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        for y in 0..side {
            let dst = (1 + r * (side + 1) + y) * w + 1 + c * (side + 1);
            px[dst..dst + side].copy_from_slice(&img[y * side..(y + 1) * side]);
        }
    }
    (px, w as u32, h as u32)
}

/// Renders images with captions into a grid (white background, black ink, 8x8 bitmap font).
pub fn captioned_grid(cells: &[(&str, &[u8], u32)], cols: usize) -> Vec<u8> {
    const CELL: usize = 128;
    const CAPTION: usize = 12;
    const PAD: usize = 4;
    let cols = cols.min(cells.len().max(1));
    let rows = cells.len().div_ceil(cols).max(1);
    let (w, h) = (
        cols * (CELL + PAD) + PAD,
        rows * (CELL + CAPTION + PAD) + PAD,
    );
    let mut img = vec![255u8; w * h];
    for (i, (caption, pixels, size)) in cells.iter().enumerate() {
        let (cx, cy) = (
            PAD + (i % cols) * (CELL + PAD),
            PAD + (i / cols) * (CELL + CAPTION + PAD),
        );
        draw_text(&mut img, w, cx, cy + 2, caption, CELL / 8);
        let size = *size as usize;
        for y in 0..CELL {
            for x in 0..CELL {
                let v = pixels
                    .get((y * size / CELL) * size + x * size / CELL)
                    .copied()
                    .unwrap_or(0);
                img[(cy + CAPTION + y) * w + cx + x] = 255 - v;
            }
        }
        // Frame.
        for x in 0..CELL {
            img[(cy + CAPTION) * w + cx + x] = 160;
            img[(cy + CAPTION + CELL - 1) * w + cx + x] = 160;
        }
        for y in 0..CELL {
            img[(cy + CAPTION + y) * w + cx] = 160;
            img[(cy + CAPTION + y) * w + cx + CELL - 1] = 160;
        }
    }
    encode_grey(&img, w as u32, h as u32)
}

fn draw_text_ink(
    img: &mut [u8],
    w: usize,
    x0: usize,
    y0: usize,
    text: &str,
    max_chars: usize,
    ink: u8,
) {
    for (i, ch) in text.chars().take(max_chars).enumerate() {
        for (gy, row) in glyph(ch).iter().enumerate() {
            for gx in 0..8 {
                if row & (1 << gx) != 0 {
                    let (x, y) = (x0 + i * 8 + gx, y0 + gy);
                    if x < w
                        && let Some(p) = img.get_mut(y * w + x)
                    {
                        *p = ink;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_png_round_trips_and_checks_its_size() {
        let px: Vec<u8> = (0..16).map(|v| v * 16).collect();
        let png = encode_grey(&px, 4, 4);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(decode_grey(&png, 4).unwrap(), px);
        assert!(decode_grey(&png, 5).unwrap_err().contains("expected 5x5"));
        assert!(encode(&px, 4, 4, 5).is_err());
    }

    #[test]
    fn tiles_images_with_one_pixel_gaps() {
        let (px, w, h) = tile(&[vec![255; 4], vec![1; 4], vec![2; 4]], 2);
        // 3 images: 2 columns, 2 rows of 2x2 cells with 1 px gaps.
        assert_eq!((w, h), (7, 7));
        assert_eq!(px[w as usize + 1], 255);
        assert_eq!(px[w as usize + 4], 1);
        assert_eq!(px[4 * w as usize + 1], 2);
        assert_eq!(px[0], 64);
    }

    #[test]
    fn captioned_grid_draws_ink_dark_on_white() {
        let ink = vec![255u8; 4];
        let png = captioned_grid(&[("cat", &ink, 2)], 1);
        let img = decode_any(&png);
        // One 128 px cell inside a 4 px pad: the cell's middle is full ink, i.e. black.
        let w = 4 + 128 + 4;
        assert_eq!(img[(4 + 12 + 64) * w + 4 + 64], 0);
        assert_eq!(img[0], 255);
    }

    fn decode_any(bytes: &[u8]) -> Vec<u8> {
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        buf
    }
}

/// A labelled matrix chart as a grey PNG: `title` on top, row names on the left, column names
/// written vertically above, each cell shaded by `shade` (0 white ..= 1 black) and labelled
/// with `text` when it is not empty, then `notes` as lines of text below. Used for confusion
/// matrices (`evaluate --png`, TensorBoard's images tab).
pub fn matrix_chart(
    title: &str,
    names: &[String],
    shade: &dyn Fn(usize, usize) -> f64,
    text: &dyn Fn(usize, usize) -> String,
    notes: &[String],
) -> (Vec<u8>, u32, u32) {
    const CELL: usize = 28;
    const NAME: usize = 14; // characters of a class name
    const PAD: usize = 6;
    let n = names.len();
    let label_w = NAME * 8 + PAD;
    let top = PAD + 12 + NAME * 8 + PAD;
    let note_w = notes.iter().map(|l| l.chars().count()).max().unwrap_or(0) * 8;
    let title_w = title.chars().count() * 8;
    let w = (label_w + n * CELL + PAD)
        .max(note_w + 2 * PAD)
        .max(title_w + 2 * PAD);
    let h = top + n * CELL + PAD + notes.len() * 12 + PAD;
    let mut img = vec![255u8; w * h];
    draw_text(&mut img, w, PAD, PAD, title, w / 8);
    for (i, name) in names.iter().enumerate() {
        let name: String = name.chars().take(NAME).collect();
        // Row label, right-aligned against the matrix.
        let x = label_w - PAD - name.chars().count() * 8;
        draw_text(&mut img, w, x, top + i * CELL + (CELL - 8) / 2, &name, NAME);
        // Column label, bottom-up, ending just above the matrix.
        let x = label_w + i * CELL + (CELL - 8) / 2;
        draw_text_up(&mut img, w, x, top - PAD, &name);
    }
    for r in 0..n {
        for c in 0..n {
            let g = (255.0 * (1.0 - shade(r, c).clamp(0.0, 1.0))).round() as u8;
            let (x0, y0) = (label_w + c * CELL, top + r * CELL);
            for y in y0..y0 + CELL - 1 {
                img[y * w + x0..y * w + x0 + CELL - 1].fill(g);
            }
            let t = text(r, c);
            if !t.is_empty() {
                let tw = t.chars().count().min(3) * 8;
                let (tx, ty) = (x0 + (CELL - 1 - tw) / 2, y0 + (CELL - 9) / 2);
                // Dark text on light cells, light on dark ones.
                let ink = if g > 110 { 0 } else { 255 };
                draw_text_ink(&mut img, w, tx, ty, &t, 3, ink);
            }
        }
    }
    let y0 = top + n * CELL + PAD;
    for (i, line) in notes.iter().enumerate() {
        draw_text(&mut img, w, PAD, y0 + i * 12, line, w / 8);
    }
    (img, w as u32, h as u32)
}

fn draw_text(img: &mut [u8], w: usize, x0: usize, y0: usize, text: &str, max_chars: usize) {
    draw_text_ink(img, w, x0, y0, text, max_chars, 0)
}

/// One 8x8 glyph of the bitmap font (`?` for characters it lacks).
fn glyph(ch: char) -> [u8; 8] {
    use font8x8::UnicodeFonts;
    font8x8::BASIC_FONTS
        .get(ch)
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Text rotated a quarter turn counter-clockwise, read bottom-up, its baseline end at
/// `(x0, y_bottom)`.
fn draw_text_up(img: &mut [u8], w: usize, x0: usize, y_bottom: usize, text: &str) {
    for (i, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        for (gy, row) in g.iter().enumerate() {
            for gx in 0..8 {
                if row & (1 << gx) != 0 {
                    let Some(y) = y_bottom.checked_sub(i * 8 + gx + 1) else {
                        continue;
                    };
                    if let Some(p) = img.get_mut(y * w + x0 + gy) {
                        *p = 0;
                    }
                }
            }
        }
    }
}
