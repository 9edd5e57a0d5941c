// memhold holds SIZE MiB of live memory for bench/freeze.py and proves, after a restore, that every byte
// came back: a third zero pages, a third compressible text, a third random bytes (like bench/ingest.py's
// archive), all written, so every page is resident and dumped.
//
//	memhold SIZE_MIB SEED
//
// It prints "ready" once the memory is written and checked, then a counter every 100 ms, one line each
// (the freeze window is measured on these lines, as lab/live.py does). When two lines are more than
// 500 ms apart by the wall clock — the process was frozen, dumped and restored — it checks the whole memory
// again against what SEED regenerates, beside the counter, and prints "verified N MiB" or "CORRUPT at byte X"
// (and exits 3). The wall clock, not Go's monotonic reading: across a restore the monotonic clock was seen to
// jump by no more than the dump's own short freeze, so a small pod's restore went unnoticed.
package main

import (
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"time"
)

const chunk = 1 << 20

// pattern writes (or, with check, compares against) the bytes SEED gives, one MiB at a time: the check
// needs one MiB beside the memory, not a second copy of it.
func pattern(buf []byte, seed int64, check bool) int {
	third := len(buf) / 3 / chunk * chunk
	text := []byte("lpm checkpoint payload: compressible text, repeated with a counter ")
	rng := rand.New(rand.NewSource(seed))
	want := make([]byte, chunk)
	for start := 0; start < len(buf); start += chunk {
		end := min(start+chunk, len(buf))
		part := want[:end-start]
		switch {
		case start < third: // zero pages, written so they are resident
			clear(part)
		case start < 2*third:
			for i := range part {
				part[i] = text[(start+i)%len(text)] + byte(start/chunk%7)
			}
		default:
			rng.Read(part)
		}
		if !check {
			copy(buf[start:end], part)
			continue
		}
		for i := range part {
			if buf[start+i] != part[i] {
				return start + i
			}
		}
	}
	return -1
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: memhold SIZE_MIB SEED")
		os.Exit(2)
	}
	size, err1 := strconv.Atoi(os.Args[1])
	seed, err2 := strconv.ParseInt(os.Args[2], 10, 64)
	if err1 != nil || err2 != nil || size <= 0 {
		fmt.Fprintln(os.Stderr, "memhold: SIZE_MIB and SEED must be numbers")
		os.Exit(2)
	}
	buf := make([]byte, size*chunk)
	pattern(buf, seed, false)
	if at := pattern(buf, seed, true); at >= 0 {
		fmt.Printf("CORRUPT at byte %d\n", at)
		os.Exit(3)
	}
	fmt.Println("ready")
	// The check runs beside the counter: the counter's lines measure the freeze, and checking 2 GiB takes
	// seconds. The memory is only read meanwhile, so the check sees what was restored.
	checking := make(chan struct{}, 1)
	last := time.Now()
	for i := 1; ; i++ {
		time.Sleep(100 * time.Millisecond)
		now := time.Now()
		fmt.Println(i)
		if now.Round(0).Sub(last.Round(0)) > 500*time.Millisecond { // Round(0): the wall clock alone
			select {
			case checking <- struct{}{}:
				go func() {
					if at := pattern(buf, seed, true); at >= 0 {
						fmt.Printf("CORRUPT at byte %d\n", at)
						os.Exit(3)
					}
					fmt.Printf("verified %d MiB\n", size)
					<-checking
				}()
			default: // one check at a time
			}
		}
		last = now
	}
}
