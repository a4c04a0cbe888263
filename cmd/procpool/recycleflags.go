package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeFlag is a size in bytes written as a number with an optional K, M or G
// (powers of 1024): -max-rss 512M.
type sizeFlag int64

func (f *sizeFlag) String() string { return strconv.FormatInt(int64(*f), 10) }

func (f *sizeFlag) Set(s string) error {
	mult := int64(1)
	num := strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i")
	if n := len(num); n > 0 {
		switch num[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			num = num[:n-1]
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || v*float64(mult) > math.MaxInt64/2 {
		return fmt.Errorf("want a size such as 512M or 1G, got %q", s)
	}
	*f = sizeFlag(v * float64(mult))
	return nil
}

// shareFlag is a fraction written as a percentage (10%) or a number in
// [0, 1] (0.1): -recycle-jitter.
type shareFlag float64

func (f *shareFlag) String() string { return strconv.FormatFloat(float64(*f)*100, 'g', -1, 64) + "%" }

func (f *shareFlag) Set(s string) error {
	num, pct := strings.CutSuffix(s, "%")
	v, err := strconv.ParseFloat(num, 64)
	if pct {
		v /= 100
	}
	if err != nil || v < 0 || v > 1 || math.IsNaN(v) {
		return fmt.Errorf("want a share from 0%% to 100%% (or 0 to 1), got %q", s)
	}
	*f = shareFlag(v)
	return nil
}
