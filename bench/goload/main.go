// Command etcd-goload is etcd-bench's load generator written on Go's
// clientv3, the client library Kubernetes uses, so that bench/compare can
// measure every workload with both clients.
//
// It takes etcd-bench's flags and subcommands (as far as bench/compare uses
// them) and prints etcd-bench's --json report, with the same keys.
//
// Closed-loop workloads (put, range, txn-put, mixed, lease) run --clients
// goroutines sharing --conns clientv3 clients (each one gRPC connection to
// one endpoint, endpoints assigned round-robin as etcd-bench assigns its
// connections), each goroutine issuing one request at a time for --duration
// or until --total requests were sent. watch runs open-loop: one writer puts
// at --rate while --watchers watchers on one prefix, spread over --streams
// watch streams, count events and measure the put-to-event latency from a
// timestamp in the value (16 hex digits of nanoseconds since the run's
// start, as etcd-bench writes it).
//
// Built in GOPATH mode (GO111MODULE=off) against Debian's
// golang-etcd-server-dev (go.etcd.io/etcd/clientv3 3.4).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"math"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/logutil"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"
)

// durationFlag parses durations as etcd-bench does: 10s, 500ms, 2m, 1h, or a
// bare number of seconds.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	num, mul := s, 1.0
	switch {
	case strings.HasSuffix(s, "ms"):
		num, mul = s[:len(s)-2], 0.001
	case strings.HasSuffix(s, "s"):
		num, mul = s[:len(s)-1], 1
	case strings.HasSuffix(s, "m"):
		num, mul = s[:len(s)-1], 60
	case strings.HasSuffix(s, "h"):
		num, mul = s[:len(s)-1], 3600
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("bad duration %q (examples: 10s, 500ms, 2m)", s)
	}
	return time.Duration(v * mul * float64(time.Second)), nil
}

// opts holds etcd-bench's global flags.
type opts struct {
	endpoints string
	conns     int
	clients   int
	duration  time.Duration
	total     int64
	maxRate   float64
	timeout   time.Duration
	json      bool
	quiet     bool
	gateway   bool
	cacert    string
	cert      string
	key       string
}

// global flags are accepted before and after the subcommand, as etcd-bench's.
func (o *opts) register(fs *flag.FlagSet) {
	fs.StringVar(&o.endpoints, "endpoints", o.endpoints, "comma-separated client URLs")
	fs.IntVar(&o.conns, "conns", o.conns, "number of clientv3 clients (gRPC connections), assigned to endpoints round-robin")
	fs.IntVar(&o.clients, "clients", o.clients, "number of concurrent clients, spread over the connections")
	fs.Var(durationFlag{&o.duration}, "duration", "how long to run (ignored when --total is given)")
	fs.Int64Var(&o.total, "total", o.total, "stop after this many requests (watch: this many puts); -1: none")
	fs.Float64Var(&o.maxRate, "max-rate", o.maxRate, "cap on the total request rate of closed-loop workloads (0 = none)")
	fs.Var(durationFlag{&o.timeout}, "timeout", "per-request timeout; a request exceeding it counts as an error")
	fs.BoolVar(&o.json, "json", o.json, "print one JSON object instead of the text report")
	fs.BoolVar(&o.quiet, "quiet", o.quiet, "no progress line on stderr")
	fs.BoolVar(&o.gateway, "gateway", o.gateway, "not supported by the Go client")
	fs.StringVar(&o.cacert, "cacert", o.cacert, "CA bundle to verify https endpoints with")
	fs.StringVar(&o.cert, "cert", o.cert, "client certificate for https endpoints")
	fs.StringVar(&o.key, "key", o.key, "client certificate's key")
}

// keyArgs are etcd-bench's key flags.
type keyArgs struct {
	keySize    int
	keySpace   uint64
	sequential bool
	keyStart   uint64
	keyPrefix  string
}

func (k *keyArgs) register(fs *flag.FlagSet) {
	fs.IntVar(&k.keySize, "key-size", 8, "key size in bytes (zero-padded decimal index after --key-prefix)")
	fs.Uint64Var(&k.keySpace, "key-space", 100000, "number of distinct keys")
	fs.BoolVar(&k.sequential, "sequential-keys", false, "walk the key space in order instead of at random")
	fs.Uint64Var(&k.keyStart, "key-start", 0, "first index of --sequential-keys")
	fs.StringVar(&k.keyPrefix, "key-prefix", "", "prefix for every key")
}

// keyGen produces keys prefix + zero-padded index from a key space.
type keyGen struct {
	prefix string
	width  int
	space  uint64
	seq    *uint64
	start  uint64
	rng    *rand.Rand
}

func newKeyGen(a *keyArgs, seq *uint64, seed int64) *keyGen {
	space := a.keySpace
	if space < 1 {
		space = 1
	}
	digits := len(strconv.FormatUint(space-1, 10))
	width := a.keySize - len(a.keyPrefix)
	if width < digits {
		width = digits
	}
	g := &keyGen{prefix: a.keyPrefix, width: width, space: space, start: a.keyStart,
		rng: rand.New(rand.NewSource(time.Now().UnixNano() ^ seed*0x9E3779B9))}
	if a.sequential {
		g.seq = seq
	}
	return g
}

func (g *keyGen) index() uint64 {
	if g.seq != nil {
		return (atomic.AddUint64(g.seq, 1) - 1 + g.start) % g.space
	}
	return uint64(g.rng.Int63n(int64(g.space)))
}

func (g *keyGen) key(i uint64) string {
	return g.prefix + fmt.Sprintf("%0*d", g.width, i)
}

// shared holds the counters of a run.
type shared struct {
	done, issued, slots, errors uint64
	stop                        int32
	deadline                    time.Time
	total                       int64
	timeout                     time.Duration
	start                       time.Time
	maxRate                     float64
}

func newShared(o *opts, start time.Time) *shared {
	s := &shared{total: o.total, timeout: o.timeout, start: start, maxRate: o.maxRate}
	if o.total < 0 {
		s.deadline = start.Add(o.duration)
	}
	return s
}

// claim takes the right to send one more request.
func (s *shared) claim() bool {
	if atomic.LoadInt32(&s.stop) != 0 {
		return false
	}
	if !s.deadline.IsZero() && !time.Now().Before(s.deadline) {
		return false
	}
	if s.total >= 0 {
		return int64(atomic.AddUint64(&s.issued, 1)-1) < s.total
	}
	return true
}

func (s *shared) error(what string) {
	n := atomic.AddUint64(&s.errors, 1) - 1
	if n < 5 {
		fmt.Fprintf(os.Stderr, "etcd-goload: request failed: %s\n", what)
	} else if n == 5 {
		fmt.Fprintln(os.Stderr, "etcd-goload: further errors are only counted")
	}
}

func fail(msg string) {
	fmt.Fprintf(os.Stderr, "etcd-goload: %s\n", msg)
	os.Exit(2)
}

// progress prints a line on stderr once a second until stop is set.
func progress(s *shared, what string, quiet bool) {
	if quiet {
		return
	}
	go func() {
		start := time.Now()
		var prev uint64
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for range t.C {
			if atomic.LoadInt32(&s.stop) != 0 {
				return
			}
			n := atomic.LoadUint64(&s.done)
			fmt.Fprintf(os.Stderr, "etcd-goload: %5.0fs %10d %s %9d %s/s (last 1s) %6d errors\n",
				time.Since(start).Seconds(), n, what, n-prev, what, atomic.LoadUint64(&s.errors))
			prev = n
		}
	}()
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// percentiles summarises sorted nanosecond samples as etcd-bench does
// (nearest rank).
func percentiles(sorted []int64) map[string]float64 {
	pick := func(q float64) float64 {
		if len(sorted) == 0 {
			return 0
		}
		rank := int(math.Ceil(q * float64(len(sorted))))
		if rank < 1 {
			rank = 1
		}
		if rank > len(sorted) {
			rank = len(sorted)
		}
		return float64(sorted[rank-1]) / 1e6
	}
	mean, max := 0.0, 0.0
	if len(sorted) > 0 {
		sum := 0.0
		for _, v := range sorted {
			sum += float64(v)
		}
		mean = sum / float64(len(sorted)) / 1e6
		max = float64(sorted[len(sorted)-1]) / 1e6
	}
	return map[string]float64{
		"mean_ms": round3(mean), "p50_ms": round3(pick(0.50)), "p90_ms": round3(pick(0.90)),
		"p99_ms": round3(pick(0.99)), "p999_ms": round3(pick(0.999)), "max_ms": round3(max),
	}
}

func sortInt64(xs []int64) { sort.Slice(xs, func(i, j int) bool { return xs[i] < xs[j] }) }

func normalize(ep string) string {
	if strings.Contains(ep, "://") {
		return ep
	}
	return "http://" + ep
}

func endpointList(o *opts) []string {
	var eps []string
	for _, e := range strings.Split(o.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, normalize(e))
		}
	}
	if len(eps) == 0 {
		fail("no endpoints")
	}
	return eps
}

func tlsConfig(o *opts) *tls.Config {
	if o.cacert == "" && o.cert == "" {
		return nil
	}
	if (o.cert == "") != (o.key == "") {
		fail("--cert and --key go together")
	}
	cfg := &tls.Config{}
	if o.cacert != "" {
		pem, err := ioutil.ReadFile(o.cacert)
		if err != nil {
			fail(fmt.Sprintf("cannot read %s: %v", o.cacert, err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail(fmt.Sprintf("no certificate in %s", o.cacert))
		}
		cfg.RootCAs = pool
	}
	if o.cert != "" {
		c, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			fail(fmt.Sprintf("cannot load %s and %s: %v", o.cert, o.key, err))
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

// connect makes --conns clientv3 clients, client i on endpoint i mod the
// number of endpoints, each connected before the run starts.
func connect(o *opts) []*clientv3.Client {
	eps := endpointList(o)
	tlsCfg := tlsConfig(o)
	lcfg := logutil.DefaultZapLoggerConfig
	lcfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	n := o.conns
	if n < 1 {
		n = 1
	}
	clis := make([]*clientv3.Client, n)
	for i := range clis {
		ep := eps[i%len(eps)]
		var t *tls.Config
		if strings.HasPrefix(ep, "https://") {
			t = tlsCfg
			if t == nil {
				t = &tls.Config{}
			}
		}
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{ep},
			DialTimeout: o.timeout,
			TLS:         t,
			LogConfig:   &lcfg,
		})
		if err != nil {
			fail(fmt.Sprintf("cannot connect to %s: %v", ep, err))
		}
		clis[i] = c
	}
	return clis
}

// worker is what one closed-loop client does per operation.
type worker interface {
	step(ctx context.Context) error
	extra() map[string]uint64
}

type putWorker struct {
	cli   *clientv3.Client
	keys  *keyGen
	value string
}

func (w *putWorker) step(ctx context.Context) error {
	_, err := w.cli.Put(ctx, w.keys.key(w.keys.index()), w.value)
	return err
}
func (w *putWorker) extra() map[string]uint64 { return nil }

type rangeWorker struct {
	cli  *clientv3.Client
	key  string
	opts []clientv3.OpOption
}

func (w *rangeWorker) step(ctx context.Context) error {
	_, err := w.cli.Get(ctx, w.key, w.opts...)
	return err
}
func (w *rangeWorker) extra() map[string]uint64 { return nil }

// txnWorker: optimistic update, Txn(mod_revision == last seen) then Put,
// else Get; the last mod_revision seen per key is shared by all clients,
// like an API server's watch cache, so conflicts come from real races only.
type txnWorker struct {
	cli       *clientv3.Client
	keys      *keyGen
	value     string
	last      []int64
	conflicts uint64
}

func fetchMax(p *int64, v int64) {
	for {
		old := atomic.LoadInt64(p)
		if v <= old || atomic.CompareAndSwapInt64(p, old, v) {
			return
		}
	}
}

func (w *txnWorker) step(ctx context.Context) error {
	i := w.keys.index()
	key := w.keys.key(i)
	slot := &w.last[i]
	seen := atomic.LoadInt64(slot)
	resp, err := w.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", seen)).
		Then(clientv3.OpPut(key, w.value)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return err
	}
	if resp.Succeeded {
		fetchMax(slot, resp.Header.Revision)
		return nil
	}
	w.conflicts++
	var rev int64
	for _, r := range resp.Responses {
		if rr := r.GetResponseRange(); rr != nil {
			if len(rr.Kvs) > 0 {
				rev = rr.Kvs[0].ModRevision
			}
			break
		}
	}
	fetchMax(slot, rev)
	return nil
}
func (w *txnWorker) extra() map[string]uint64 { return map[string]uint64{"conflicts": w.conflicts} }

type mixedWorker struct {
	cli          *clientv3.Client
	keys         *keyGen
	value        string
	readRatio    float64
	serializable bool
	rng          *rand.Rand
	reads        uint64
}

func (w *mixedWorker) step(ctx context.Context) error {
	key := w.keys.key(w.keys.index())
	if w.rng.Float64() < w.readRatio {
		w.reads++
		var o []clientv3.OpOption
		if w.serializable {
			o = append(o, clientv3.WithSerializable())
		}
		_, err := w.cli.Get(ctx, key, o...)
		return err
	}
	_, err := w.cli.Put(ctx, key, w.value)
	return err
}
func (w *mixedWorker) extra() map[string]uint64 { return map[string]uint64{"reads": w.reads} }

// leaseWorker: LeaseGrant, one keep-alive round trip (clientv3's
// KeepAliveOnce, which opens a keep-alive stream for it), LeaseRevoke.
type leaseWorker struct {
	cli *clientv3.Client
	ttl int64
}

func (w *leaseWorker) step(ctx context.Context) error {
	g, err := w.cli.Grant(ctx, w.ttl)
	if err != nil {
		return err
	}
	ka, err := w.cli.KeepAliveOnce(ctx, g.ID)
	if err != nil {
		return err
	}
	if ka.ID != g.ID || ka.TTL <= 0 {
		return fmt.Errorf("unexpected keep-alive response %+v", ka)
	}
	_, err = w.cli.Revoke(ctx, g.ID)
	return err
}
func (w *leaseWorker) extra() map[string]uint64 { return nil }

// runClosed runs the workers until the deadline or the total is reached.
func runClosed(o *opts, name string, workers []worker) (map[string]interface{}, uint64) {
	start := time.Now()
	sh := newShared(o, start)
	progress(sh, "ops", o.quiet)
	type result struct {
		lat   []int64
		extra map[string]uint64
	}
	results := make([]result, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func(i int, w worker) {
			defer wg.Done()
			lat := make([]int64, 0, 4096)
			for sh.claim() {
				if sh.maxRate > 0 {
					n := atomic.AddUint64(&sh.slots, 1) - 1
					at := sh.start.Add(time.Duration(float64(n) / sh.maxRate * 1e9))
					time.Sleep(time.Until(at))
				}
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), sh.timeout)
				err := w.step(ctx)
				cancel()
				if err == nil {
					lat = append(lat, int64(time.Since(t0)))
					atomic.AddUint64(&sh.done, 1)
				} else if errors.Is(err, context.DeadlineExceeded) {
					sh.error("timed out")
				} else {
					sh.error(err.Error())
				}
			}
			results[i] = result{lat, w.extra()}
		}(i, w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	atomic.StoreInt32(&sh.stop, 1)
	var all []int64
	extra := map[string]uint64{}
	for _, r := range results {
		all = append(all, r.lat...)
		for k, v := range r.extra {
			extra[k] += v
		}
	}
	sortInt64(all)
	ops := uint64(len(all))
	errs := atomic.LoadUint64(&sh.errors)
	opsPerS := 0.0
	if elapsed > 0 {
		opsPerS = float64(ops) / elapsed
	}
	rep := map[string]interface{}{
		"workload":  name,
		"endpoints": strings.Split(o.endpoints, ","),
		"conns":     maxInt(o.conns, 1),
		"clients":   maxInt(o.clients, 1),
		"ops":       ops,
		"errors":    errs,
		"elapsed_s": round3(elapsed),
		"ops_per_s": round3(opsPerS),
		"latency":   percentiles(all),
	}
	for k, v := range extra {
		rep[k] = v
	}
	return rep, errs
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// preloadRange writes the 100 keys the range workload reads.
func preloadRange(cli *clientv3.Client, valSize int, timeout time.Duration) {
	v := strings.Repeat("r", valSize)
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := cli.Put(ctx, fmt.Sprintf("/bench-range/%03d", i), v)
		cancel()
		if err != nil {
			fail(fmt.Sprintf("preload: %v", err))
		}
	}
}

// stampValue: 16 hex digits of nanoseconds since the run's start, padded
// with 'w' to size (at least 16).
func stampValue(start time.Time, size int) string {
	s := fmt.Sprintf("%016x", uint64(time.Since(start)))
	if size > 16 {
		s += strings.Repeat("w", size-16)
	}
	return s
}

func readStamp(v []byte) (int64, bool) {
	if len(v) < 16 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(v[:16]), 16, 64)
	return int64(n), err == nil
}

type watchArgs struct {
	watchers int
	streams  int
	rate     float64
	prefix   string
	keySpace uint64
	valSize  int
	drain    time.Duration
	prevKV   bool
}

func runWatch(o *opts, a *watchArgs, clis []*clientv3.Client) (map[string]interface{}, uint64) {
	start := time.Now()
	watchers := maxInt(a.watchers, 1)
	streams := a.streams
	if streams < 1 {
		streams = 1
	}
	if streams > watchers {
		streams = watchers
	}
	sh := newShared(o, start)
	var events, created uint64
	var lastEvent int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lats := make([][]int64, watchers)
	var wg sync.WaitGroup
	w := 0
	for s := 0; s < streams; s++ {
		n := watchers / streams
		if s < watchers%streams {
			n++
		}
		cli := clis[s%len(clis)]
		// clientv3 puts all watchers of one client with the same context
		// metadata on one gRPC stream; streams sharing a client are told
		// apart by a metadata entry of their own.
		sctx := ctx
		if streams > len(clis) {
			sctx = metadata.AppendToOutgoingContext(ctx, "bench-watch-stream", strconv.Itoa(s))
		}
		wopts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
		if a.prevKV {
			wopts = append(wopts, clientv3.WithPrevKV())
		}
		for j := 0; j < n; j++ {
			wch := cli.Watch(sctx, a.prefix, wopts...)
			wg.Add(1)
			go func(idx int, wch clientv3.WatchChan) {
				defer wg.Done()
				lat := make([]int64, 0, 1024)
				for wr := range wch {
					if wr.Created {
						atomic.AddUint64(&created, 1)
					}
					if wr.Canceled {
						if ctx.Err() == nil {
							sh.error(fmt.Sprintf("watch canceled: %v", wr.Err()))
						}
						break
					}
					if len(wr.Events) == 0 {
						continue
					}
					now := int64(time.Since(start))
					for _, ev := range wr.Events {
						if ev.Kv == nil {
							continue
						}
						if ts, ok := readStamp(ev.Kv.Value); ok {
							d := now - ts
							if d < 0 {
								d = 0
							}
							lat = append(lat, d)
						}
					}
					atomic.AddUint64(&events, uint64(len(wr.Events)))
					atomic.AddUint64(&sh.done, uint64(len(wr.Events)))
					for {
						old := atomic.LoadInt64(&lastEvent)
						if now <= old || atomic.CompareAndSwapInt64(&lastEvent, old, now) {
							break
						}
					}
				}
				lats[idx] = lat
			}(w, wch)
			w++
		}
	}
	// All watchers must exist before the first put.
	createdBy := time.Now().Add(60 * time.Second)
	for atomic.LoadUint64(&created) < uint64(watchers) {
		if time.Now().After(createdBy) {
			fail(fmt.Sprintf("only %d of %d watchers created after 60s", atomic.LoadUint64(&created), watchers))
		}
		time.Sleep(5 * time.Millisecond)
	}
	progress(sh, "events", o.quiet)

	// The writer: open loop at the given rate.
	rate := a.rate
	if rate <= 0 {
		rate = 100
	}
	puts := int64(math.Round(rate * o.duration.Seconds()))
	if o.total >= 0 {
		puts = o.total
	}
	keySpace := a.keySpace
	if keySpace < 1 {
		keySpace = 1
	}
	putStartNs := int64(time.Since(start))
	putStart := time.Now()
	sem := make(chan struct{}, 256)
	var mu sync.Mutex
	putLat := make([]int64, 0, puts)
	var pw sync.WaitGroup
	for i := int64(0); i < puts; i++ {
		at := putStart.Add(time.Duration(float64(i) / rate * 1e9))
		time.Sleep(time.Until(at))
		sem <- struct{}{}
		cli := clis[int(i)%len(clis)]
		key := a.prefix + fmt.Sprintf("%06d", uint64(i)%keySpace)
		pw.Add(1)
		go func() {
			defer pw.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			pctx, pcancel := context.WithTimeout(context.Background(), sh.timeout)
			defer pcancel()
			_, err := cli.Put(pctx, key, stampValue(start, a.valSize))
			if err != nil {
				sh.error(fmt.Sprintf("put: %v", err))
				return
			}
			d := int64(time.Since(t0))
			mu.Lock()
			putLat = append(putLat, d)
			mu.Unlock()
		}()
	}
	pw.Wait()
	putsOK := uint64(len(putLat))
	expected := putsOK * uint64(watchers)
	drainBy := time.Now().Add(a.drain)
	for atomic.LoadUint64(&events) < expected && time.Now().Before(drainBy) {
		time.Sleep(5 * time.Millisecond)
	}
	atomic.StoreInt32(&sh.stop, 1)
	got := atomic.LoadUint64(&events)
	last := atomic.LoadInt64(&lastEvent)
	cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd-goload: watchers did not end within 10s of their cancellation")
	}
	var all []int64
	for _, l := range lats {
		all = append(all, l...)
	}
	sortInt64(all)
	sortInt64(putLat)
	span := 0.0
	if last > putStartNs {
		span = float64(last-putStartNs) / 1e9
	}
	opsPerS := 0.0
	if span > 0 {
		opsPerS = float64(got) / span
	}
	missing := uint64(0)
	if expected > got {
		missing = expected - got
	}
	errs := atomic.LoadUint64(&sh.errors)
	return map[string]interface{}{
		"workload":        "watch",
		"endpoints":       strings.Split(o.endpoints, ","),
		"conns":           maxInt(o.conns, 1),
		"watchers":        watchers,
		"streams":         streams,
		"prev_kv":         a.prevKV,
		"rate":            rate,
		"puts":            putsOK,
		"expected_events": expected,
		"ops":             got,
		"missing_events":  missing,
		"errors":          errs,
		"elapsed_s":       round3(span),
		"ops_per_s":       round3(opsPerS),
		"latency":         percentiles(all),
		"put_latency":     percentiles(putLat),
	}, errs
}

func printText(r map[string]interface{}) {
	who := r["clients"]
	if who == nil {
		who = r["watchers"]
	}
	fmt.Printf("workload %v  endpoints %v  conns %v  clients %v\n", r["workload"], r["endpoints"], r["conns"], who)
	fmt.Printf("ops %v  errors %v  elapsed %v s  throughput %v ops/s\n", r["ops"], r["errors"], r["elapsed_s"], r["ops_per_s"])
	lat := func(label string, v interface{}) {
		m, _ := v.(map[string]float64)
		fmt.Printf("%s: p50 %.3f ms  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n", label,
			m["p50_ms"], m["p90_ms"], m["p99_ms"], m["p999_ms"], m["max_ms"], m["mean_ms"])
	}
	if r["workload"] == "watch" {
		fmt.Printf("puts %v  expected events %v  missing %v\n", r["puts"], r["expected_events"], r["missing_events"])
		lat("put-to-event latency", r["latency"])
		lat("put latency", r["put_latency"])
	} else {
		lat("latency", r["latency"])
	}
	for _, k := range []string{"conflicts", "reads"} {
		if v, ok := r[k]; ok {
			fmt.Printf("%s %v\n", k, v)
		}
	}
}

const usage = `etcd-goload: etcd-bench's workloads on Go's clientv3

Usage: etcd-goload [global flags] <put|range|txn-put|mixed|watch|lease> [flags]
Global flags (also accepted after the workload): --endpoints --conns --clients
--duration --total --max-rate --timeout --json --quiet --cacert --cert --key
`

func main() {
	o := &opts{endpoints: "127.0.0.1:2379", conns: 1, clients: 1, duration: 10 * time.Second,
		total: -1, timeout: 10 * time.Second}
	gfs := flag.NewFlagSet("etcd-goload", flag.ExitOnError)
	gfs.Usage = func() { fmt.Fprint(os.Stderr, usage); gfs.PrintDefaults() }
	o.register(gfs)
	_ = gfs.Parse(os.Args[1:])
	if gfs.NArg() == 0 {
		gfs.Usage()
		os.Exit(2)
	}
	name := gfs.Arg(0)
	fs := flag.NewFlagSet("etcd-goload "+name, flag.ExitOnError)
	o.register(fs)
	var (
		ka                keyArgs
		valSize           int
		consistency       string
		prefix, noPreload bool
		limit             int64
		readRatio         float64
		ttl               int64
		wa                watchArgs
	)
	switch name {
	case "put", "txn-put":
		ka.register(fs)
		fs.IntVar(&valSize, "val-size", 8, "value size in bytes")
	case "mixed":
		ka.register(fs)
		fs.IntVar(&valSize, "val-size", 8, "value size in bytes")
		fs.Float64Var(&readRatio, "read-ratio", 0.9, "fraction of operations that are reads")
		fs.StringVar(&consistency, "consistency", "l", "read consistency: l or s")
	case "range":
		fs.StringVar(&consistency, "consistency", "l", "l (linearizable) or s (serializable)")
		fs.BoolVar(&prefix, "prefix", false, "read a range of 100 keys instead of a single key")
		fs.Int64Var(&limit, "limit", 0, "limit for --prefix reads (0 = all 100)")
		fs.IntVar(&valSize, "val-size", 64, "value size of the preloaded keys")
		fs.BoolVar(&noPreload, "no-preload", false, "do not write the 100 keys first")
	case "lease":
		fs.Int64Var(&ttl, "ttl", 60, "TTL of the granted leases, in seconds")
	case "watch":
		fs.IntVar(&wa.watchers, "watchers", 1000, "number of watchers")
		fs.IntVar(&wa.streams, "streams", 10, "number of watch streams the watchers are spread over")
		fs.Float64Var(&wa.rate, "rate", 100, "puts per second by the writer")
		fs.StringVar(&wa.prefix, "prefix", "/bench-watch/", "watched prefix")
		fs.Uint64Var(&wa.keySpace, "key-space", 100, "number of distinct keys the writer puts under the prefix")
		fs.IntVar(&wa.valSize, "val-size", 64, "value size in bytes (at least 16: it carries the put timestamp)")
		fs.BoolVar(&wa.prevKV, "prev-kv", false, "watchers ask for each event's previous key-value, as Kubernetes' API server does")
		wa.drain = 10 * time.Second
		fs.Var(durationFlag{&wa.drain}, "drain", "how long to wait for outstanding events after the last put")
	default:
		fail(fmt.Sprintf("unknown workload %q (put, range, txn-put, mixed, watch, lease)", name))
	}
	_ = fs.Parse(gfs.Args()[1:])
	if fs.NArg() > 0 {
		fail(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if o.gateway {
		fail("--gateway: the Go client speaks gRPC only")
	}
	if consistency != "" && consistency != "l" && consistency != "s" {
		fail(fmt.Sprintf("--consistency takes l or s, not %q", consistency))
	}

	clis := connect(o)
	var rep map[string]interface{}
	var errs uint64
	if name == "watch" {
		rep, errs = runWatch(o, &wa, clis)
	} else {
		n := maxInt(o.clients, 1)
		seq := new(uint64)
		ws := make([]worker, 0, n)
		for i := 0; i < n; i++ {
			cli := clis[i%len(clis)]
			switch name {
			case "put":
				ws = append(ws, &putWorker{cli, newKeyGen(&ka, seq, int64(i)), strings.Repeat("v", valSize)})
			case "range":
				var ro []clientv3.OpOption
				key := "/bench-range/000"
				if prefix {
					ro = append(ro, clientv3.WithRange("/bench-range0"), clientv3.WithLimit(limit))
					key = "/bench-range/"
				}
				if consistency == "s" {
					ro = append(ro, clientv3.WithSerializable())
				}
				ws = append(ws, &rangeWorker{cli, key, ro})
			case "txn-put":
				if i == 0 {
					if ka.keySpace < 1 {
						ka.keySpace = 1
					}
					if ka.keySpace > 100000000 {
						ka.keySpace = 100000000
					}
				}
				ws = append(ws, &txnWorker{cli: cli, keys: newKeyGen(&ka, seq, int64(i)),
					value: strings.Repeat("t", valSize)})
			case "mixed":
				rr := math.Max(0, math.Min(1, readRatio))
				ws = append(ws, &mixedWorker{cli: cli, keys: newKeyGen(&ka, seq, int64(i)),
					value: strings.Repeat("m", valSize), readRatio: rr, serializable: consistency == "s",
					rng: rand.New(rand.NewSource(time.Now().UnixNano() + 1000003 + int64(i)))})
			case "lease":
				ws = append(ws, &leaseWorker{cli, ttl})
			}
		}
		if name == "txn-put" {
			last := make([]int64, ka.keySpace)
			for _, w := range ws {
				w.(*txnWorker).last = last
			}
		}
		if name == "range" && !noPreload {
			preloadRange(clis[0], valSize, o.timeout)
		}
		rep, errs = runClosed(o, name, ws)
	}
	for _, c := range clis {
		c.Close()
	}
	if o.json {
		b, err := json.Marshal(rep)
		if err != nil {
			fail(err.Error())
		}
		fmt.Println(string(b))
	} else {
		printText(rep)
	}
	if errs > 0 {
		os.Exit(1)
	}
}
