package bench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Chart geometry. The value axis is log2 of the ratio, so a bar runs from
// ×1 (as good as the reference) to the peer's ratio, right = better; it
// spans at least 1/2…2 and at most 1/chartSpan…chartSpan, bars beyond are
// clipped at the edge and labelled with their ratio.
const (
	chartSpan   = 64.0
	chartWidth  = 10 * vg.Inch
	chartBarH   = 0.1 * vg.Inch  // one peer's bar
	chartGroupG = 0.12 * vg.Inch // gap between rows
	chartDPI    = 96
)

var peerColor = []color.RGBA{
	{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255},
	{214, 39, 40, 255}, {148, 103, 189, 255}, {140, 86, 75, 255},
}

// chartPeers are the peers drawn for g: all of them, except a single
// reference (its bars would all be ×1).
func chartPeers(g group) []string {
	var peers []string
	for _, p := range g.peers {
		if !slices.Contains(g.ref, p) || len(g.ref) > 1 {
			peers = append(peers, p)
		}
	}
	return peers
}

// DrawChart writes a PNG horizontal bar chart (gonum.org/v1/plot) of the
// ratios of g's rows to their reference: one group of bars per row (row
// 1 at the top, labelled with its number and name as in the table), one
// bar per peer, log scale, > 1 = better than the reference. A peer without
// a number for a row gets "n/a" at ×1.
func DrawChart(w io.Writer, res *Result, g group) error {
	peers := chartPeers(g)
	rows := make([]RowResult, 0, len(g.rows))
	for _, i := range g.rows {
		rows = append(rows, res.Rows[i])
	}
	n := max(1, len(rows))
	np := max(1, len(peers))

	// Axis half-width in powers of two.
	span := 1.0
	for _, rr := range rows {
		for _, c := range rr.Cells {
			if c.Ratio > 0 {
				span = math.Max(span, math.Ceil(math.Abs(math.Log2(c.Ratio))))
			}
		}
	}
	span = math.Min(span, math.Log2(chartSpan))

	p := plot.New()
	p.Title.Text = fmt.Sprintf("govirtiofsd-bench %s, %s: ratio to %s (log scale, > 1 = better)",
		res.Meta.Start.Format("2006-01-02"), g.transport, strings.Join(g.ref, " or best of "))
	if len(g.ref) > 1 {
		p.Title.Text = fmt.Sprintf("govirtiofsd-bench %s, %s: ratio to the better of %s (log scale, > 1 = better)",
			res.Meta.Start.Format("2006-01-02"), g.transport, strings.Join(g.ref, ", "))
	}
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.Text = "ratio to the reference (median of the peer / median of the reference, oriented so that right = better)"
	p.X.Label.TextStyle.Font.Size = vg.Points(10)
	p.X.Min, p.X.Max = -span, span
	var ticks []plot.Tick
	for e := -int(span); e <= int(span); e++ {
		ticks = append(ticks, plot.Tick{Value: float64(e), Label: ratioLabel(e)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Tick.Label.Font.Size = vg.Points(11)

	names := make([]string, n)
	for i, rr := range rows {
		names[n-1-i] = fmt.Sprintf("%d %s (%s)", g.rows[i]+1, rr.Name, rr.Unit)
	}
	p.NominalY(names...)
	p.Y.Tick.Label.Font.Size = vg.Points(10)
	p.Y.Min, p.Y.Max = -0.5, float64(n)-0.5

	grid := plotter.NewGrid()
	grid.Horizontal.Color = color.Transparent
	grid.Vertical.Color = color.Gray{Y: 215}
	p.Add(grid)

	clipped := &barLabels{color: color.White} // drawn over the end of the bar
	na := &barLabels{color: color.Gray{Y: 110}}
	leg := plot.NewLegend()
	for k, pn := range peers {
		vals := make(plotter.Values, n)
		for i := range rows {
			y := n - 1 - i
			c := cellOf(&rows[i], pn)
			off := vg.Length(float64(np-1)/2-float64(k)) * chartBarH
			switch {
			case c == nil || c.Ratio <= 0:
				na.add(0, float64(y), off, "n/a")
			default:
				l := math.Log2(c.Ratio)
				vals[y] = l
				if math.Abs(l) > span {
					x := math.Copysign(span, l)
					clipped.add(x, float64(y), off, "×"+ratio(c.Ratio))
				}
			}
		}
		bc, err := plotter.NewBarChart(vals, chartBarH)
		if err != nil {
			return err
		}
		bc.Horizontal = true
		bc.Color = peerColor[k%len(peerColor)]
		bc.LineStyle.Width = 0
		bc.Offset = vg.Length(float64(np-1)/2-float64(k)) * chartBarH
		p.Add(bc)
		leg.Add(pn, bc)
	}
	one, err := plotter.NewLine(plotter.XYs{{X: 0, Y: -0.5}, {X: 0, Y: float64(n) - 0.5}})
	if err != nil {
		return err
	}
	one.LineStyle.Width = vg.Points(1)
	p.Add(one)
	p.Add(clipped, na)
	leg.TextStyle.Font.Size = vg.Points(11)
	leg.Left, leg.Top = true, true
	leg.Padding = 0.04 * vg.Inch
	leg.ThumbnailWidth = 0.3 * vg.Inch

	// Canvas: the plot, and a band under it for the legend.
	legendH := vg.Length(np)*(leg.TextStyle.Height("Xg")+leg.Padding) + 0.25*vg.Inch
	height := vg.Length(n)*rowHeight(np) + 1.3*vg.Inch + legendH
	img := vgimg.NewWith(vgimg.UseWH(chartWidth, height), vgimg.UseDPI(chartDPI))
	dc := draw.New(img)
	p.Draw(draw.Crop(dc, 0.1*vg.Inch, -0.25*vg.Inch, legendH, -0.1*vg.Inch))
	leg.Draw(draw.Crop(dc, 0.3*vg.Inch, 0, 0, legendH-dc.Size().Y-0.1*vg.Inch))
	_, err = vgimg.PngCanvas{Canvas: img}.WriteTo(w)
	return err
}

// rowHeight is the height of one row's group of bars.
func rowHeight(np int) vg.Length { return vg.Length(np)*chartBarH + chartGroupG }

func ratioLabel(e int) string {
	switch {
	case e == 0:
		return "×1"
	case e > 0:
		return fmt.Sprintf("×%d", 1<<e)
	}
	return fmt.Sprintf("×1/%d", 1<<-e)
}

// barLabels writes small texts at bars: at value x of row y, moved by off
// along the row axis like the bar (BarChart.Offset), so a label sits on
// its bar whatever the plot's height. Labels at x > 0 end there, the
// others start there.
type barLabels struct {
	color color.Color
	items []barLabel
}

type barLabel struct {
	x, y float64
	off  vg.Length
	text string
}

func (l *barLabels) add(x, y float64, off vg.Length, text string) {
	l.items = append(l.items, barLabel{x, y, off, text})
}

func (l *barLabels) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	sty := text.Style{Color: l.color, Font: font.From(plot.DefaultFont, vg.Points(8)), Handler: p.Title.TextStyle.Handler}
	for _, it := range l.items {
		st := sty
		st.YAlign = draw.YCenter
		pad := vg.Points(2)
		if it.x > 0 {
			st.XAlign = draw.XRight
			pad = -pad
		}
		c.FillText(st, vg.Point{X: trX(it.x) + pad, Y: trY(it.y) + it.off}, it.text)
	}
}
