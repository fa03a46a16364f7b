//! Reads back a QR code drawn in a terminal with half blocks (`█ ▀ ▄` and
//! spaces, two modules per cell), as a person's phone would read the screen.

/// Decodes the first QR code drawn in `screen` (a terminal's text). `painted_is_light`
/// says how the terminal shows a block: light on a dark background (`true`).
pub fn decode_terminal(screen: &str, painted_is_light: bool) -> Option<String> {
    let drawn = |l: &str| !l.trim().is_empty() && l.chars().all(|c| matches!(c, '█' | '▀' | '▄' | ' '));
    let lines: Vec<&str> = screen.lines().skip_while(|l| !drawn(l)).take_while(|l| drawn(l)).collect();
    let width = lines.iter().map(|l| l.chars().count()).max()?;
    // Each cell is two modules high; each module becomes SCALE×SCALE pixels.
    const SCALE: usize = 4;
    let mut painted = vec![vec![false; width]; lines.len() * 2];
    for (y, line) in lines.iter().enumerate() {
        for (x, c) in line.chars().enumerate() {
            painted[2 * y][x] = matches!(c, '█' | '▀');
            painted[2 * y + 1][x] = matches!(c, '█' | '▄');
        }
    }
    // A margin of the background around what was drawn.
    let margin = 4;
    let (w, h) = ((width + 2 * margin) * SCALE, (painted.len() + 2 * margin) * SCALE);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        let (mx, my) = ((x / SCALE) as isize - margin as isize, (y / SCALE) as isize - margin as isize);
        let on = my >= 0
            && mx >= 0
            && painted.get(my as usize).and_then(|row| row.get(mx as usize)).copied().unwrap_or(false);
        if on == painted_is_light { 255 } else { 0 }
    });
    let grids = image.detect_grids();
    grids.first()?.decode().ok().map(|(_, text)| text)
}
