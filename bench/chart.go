package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"slices"
	"strings"
)

// Chart scale: ratios are drawn on a log2 axis from 1/chartSpan to
// chartSpan; bars beyond are clipped and get a marker.
const chartSpan = 16.0

var (
	white     = color.RGBA{255, 255, 255, 255}
	black     = color.RGBA{0, 0, 0, 255}
	gridGray  = color.RGBA{220, 220, 220, 255}
	textGray  = color.RGBA{90, 90, 90, 255}
	peerColor = []color.RGBA{
		{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255},
		{214, 39, 40, 255}, {148, 103, 189, 255}, {140, 86, 75, 255},
	}
)

// DrawChart writes a PNG bar chart of the ratios of g's rows to their
// reference (log scale, 1 = as good as the reference, up = better). Rows
// are numbered as in the table; the legend names them.
func DrawChart(w io.Writer, res *Result, g group) error {
	var peers []string
	for _, p := range g.peers {
		if !slices.Contains(g.ref, p) || len(g.ref) > 1 {
			peers = append(peers, p)
		}
	}
	rows := make([]RowResult, 0, len(g.rows))
	for _, i := range g.rows {
		rows = append(rows, res.Rows[i])
	}
	const (
		scale   = 2
		lineH   = (glyphH + 4) * scale
		left    = 90
		right   = 20
		top     = 50
		plotH   = 420
		barW    = 14
		groupGp = 16
	)
	nRows := max(1, len(rows))
	groupW := max(1, len(peers))*barW + groupGp
	width := max(left+nRows*groupW+right, 900)
	legendTop := top + plotH + 40
	legendLines := len(peers) + 1 + len(rows)
	height := legendTop + legendLines*lineH + 20

	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)

	title := fmt.Sprintf("govirtiofsd-bench %s %s: ratio to %s (log scale, >1 = better)", res.Meta.Start.Format("2006-01-02"), g.transport, strings.Join(g.ref, "/"))
	drawText(img, 10, 12, scale, title, black)

	// y(ratio): log2 axis, 1 in the middle.
	half := plotH / 2
	yOf := func(r float64) int {
		l := math.Log2(r) / math.Log2(chartSpan)
		l = math.Max(-1, math.Min(1, l))
		return top + half - int(math.Round(l*float64(half)))
	}
	for e := -4; e <= 4; e++ {
		r := math.Pow(2, float64(e))
		y := yOf(r)
		c := gridGray
		if e == 0 {
			c = black
		}
		hline(img, left, width-right, y, c)
		label := fmt.Sprintf("%g", r)
		if e < 0 {
			label = fmt.Sprintf("1/%d", 1<<-e)
		}
		drawText(img, left-8-textWidth(label, scale), y-glyphH*scale/2, scale, label, textGray)
	}
	vline(img, left, top, top+plotH, black)

	for i, rr := range rows {
		x0 := left + i*groupW + groupGp/2
		for k, pn := range peers {
			var cell *Cell
			for j := range rr.Cells {
				if rr.Cells[j].Peer == pn {
					cell = &rr.Cells[j]
				}
			}
			x := x0 + k*barW
			col := peerColor[k%len(peerColor)]
			if cell == nil || cell.Ratio == 0 {
				// n/a: a small grey cross on the 1 line.
				drawText(img, x+2, yOf(1)-3, 1, "x", textGray)
				continue
			}
			y1, y2 := yOf(1), yOf(cell.Ratio)
			if y2 < y1 {
				y1, y2 = y2, y1
			}
			if y2 == y1 {
				y2++
			}
			fill := image.Rect(x+1, y1, x+barW-1, y2)
			draw.Draw(img, fill, &image.Uniform{col}, image.Point{}, draw.Src)
			if cell.Ratio > chartSpan || cell.Ratio < 1/chartSpan {
				// clipped: a black cap
				yc := y1
				if cell.Ratio < 1 {
					yc = y2 - 2
				}
				draw.Draw(img, image.Rect(x+1, yc, x+barW-1, yc+2), &image.Uniform{black}, image.Point{}, draw.Src)
			}
		}
		lbl := fmt.Sprint(g.rows[i] + 1)
		gx := x0 + (len(peers)*barW-textWidth(lbl, scale))/2
		drawText(img, gx, top+plotH+10, scale, lbl, black)
	}

	y := legendTop
	for k, pn := range peers {
		col := peerColor[k%len(peerColor)]
		draw.Draw(img, image.Rect(left, y, left+glyphH*scale, y+glyphH*scale), &image.Uniform{col}, image.Point{}, draw.Src)
		drawText(img, left+glyphH*scale+8, y, scale, pn, black)
		y += lineH
	}
	y += lineH / 2
	for i, rr := range rows {
		drawText(img, left, y, scale, fmt.Sprintf("%d %s (%s)", g.rows[i]+1, rr.Name, rr.Unit), textGray)
		y += lineH
	}
	return png.Encode(w, img)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x < x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y < y1; y++ {
		img.Set(x, y, c)
	}
}
