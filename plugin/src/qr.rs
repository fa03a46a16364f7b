//! A QR code drawn with half-block characters, two modules per character cell,
//! with the standard four-module quiet zone.

use qrcode::{Color, QrCode};

/// How the terminal shows a block character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// Light text on a dark background (the default): blocks are the code's
    /// light modules and its quiet zone.
    Dark,
    /// Dark text on a light background: blocks are the dark modules.
    Light,
}

const QUIET: usize = 4;

/// The lines that draw `content` as a QR code.
pub fn lines(content: &str, terminal: Terminal) -> Result<Vec<String>, String> {
    let code = QrCode::new(content.as_bytes()).map_err(|e| e.to_string())?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QUIET;
    let dark = |x: usize, y: usize| {
        let inside = (QUIET..QUIET + width).contains(&x) && (QUIET..QUIET + width).contains(&y);
        inside && colors[(y - QUIET) * width + (x - QUIET)] == Color::Dark
    };
    let painted = |x: usize, y: usize| y < size && (dark(x, y) == (terminal == Terminal::Light));
    Ok((0..size)
        .step_by(2)
        .map(|y| {
            (0..size)
                .map(|x| match (painted(x, y), painted(x, y + 1)) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_zone_is_painted_on_a_dark_terminal_and_blank_on_a_light_one() {
        let dark = lines("tg://login?token=abc", Terminal::Dark).unwrap();
        assert!(dark[0].chars().all(|c| c == '█'), "{}", dark[0]);
        let light = lines("tg://login?token=abc", Terminal::Light).unwrap();
        assert!(light[0].chars().all(|c| c == ' '));
        // The same size either way: the modules and 4 of quiet zone each side,
        // two rows per line.
        let size = QrCode::new(b"tg://login?token=abc").unwrap().width() + 8;
        for drawn in [&dark, &light] {
            assert!(drawn.iter().all(|l| l.chars().count() == size));
            assert_eq!(drawn.len(), size.div_ceil(2));
        }
    }

    #[test]
    fn what_is_drawn_reads_back_as_the_content() {
        let url = "tg://login?token=AQAbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGhIjKlMn";
        for (terminal, light) in [(Terminal::Dark, true), (Terminal::Light, false)] {
            let screen = format!("scan this\n\n{}\n\nthe same page…\n", lines(url, terminal).unwrap().join("\n"));
            assert_eq!(crmessenger_testkit::qr::decode_terminal(&screen, light).as_deref(), Some(url), "{terminal:?}");
        }
    }
}
