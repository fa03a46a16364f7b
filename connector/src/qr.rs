//! QR codes for the login page: SVG (shown inline) and PNG (for tools that
//! cannot render SVG).

use qrcode::QrCode;
use qrcode::render::svg;

/// The code as an SVG document.
pub fn svg(content: &str) -> Result<String, String> {
    let code = QrCode::new(content.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code.render::<svg::Color>().min_dimensions(256, 256).quiet_zone(true).build())
}

/// The code as a PNG image, `scale` pixels per module, with a 4-module border.
pub fn png(content: &str, scale: u32) -> Result<Vec<u8>, String> {
    let code = QrCode::new(content.as_bytes()).map_err(|e| e.to_string())?;
    let width = code.width() as u32;
    let border = 4;
    let size = (width + 2 * border) * scale;
    let colors = code.to_colors();
    let mut pixels = vec![255u8; (size * size) as usize];
    for y in 0..size {
        for x in 0..size {
            let (mx, my) = ((x / scale) as i64 - border as i64, (y / scale) as i64 - border as i64);
            if mx >= 0 && my >= 0 && (mx as u32) < width && (my as u32) < width {
                let dark = colors[(my as u32 * width + mx as u32) as usize] == qrcode::Color::Dark;
                if dark {
                    pixels[(y * size + x) as usize] = 0;
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, size, size);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&pixels).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_svg_and_png() {
        let svg = super::svg("scripted://login?token=abc").unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
        let png = super::png("scripted://login?token=abc", 4).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
