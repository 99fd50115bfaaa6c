package bench

import "testing"

func TestGlyphsComplete(t *testing.T) {
	for r, g := range glyphs {
		if len(g) != glyphW*glyphH {
			t.Errorf("glyph %q has %d pixels, want %d", r, len(g), glyphW*glyphH)
		}
	}
	for _, r := range "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -.:/()%,_=<>+[]?×" {
		if _, ok := glyphs[r]; !ok {
			t.Errorf("no glyph for %q", r)
		}
	}
}
