package report

import (
	"fmt"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// series is one line of a plot: name and (x, y) points.
type series struct {
	name string
	pts  plotter.XYs
}

// sweepSeries returns y(phase) against the phase's sender count for the
// phases of one scenario.
func sweepSeries(name string, phases []loadgen.Phase, y func(loadgen.Phase) float64) series {
	s := series{name: name}
	for _, p := range phases {
		s.pts = append(s.pts, plotter.XY{X: paramFloat(p, "senders"), Y: y(p)})
	}
	return s
}

// writePlot draws the series as lines with points into an SVG file, fonts
// not embedded (the viewer's sans-serif is used) to keep the file small.
func writePlot(path, title, xLabel, yLabel string, ss ...series) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	var args []any
	for _, s := range ss {
		args = append(args, s.name, s.pts)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return err
	}
	p.Legend.Top = true
	p.Legend.Left = true
	c := vgsvg.NewWith(vgsvg.UseWH(6*vg.Inch, 3.6*vg.Inch), vgsvg.EmbedFonts(false))
	p.Draw(draw.New(c))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
