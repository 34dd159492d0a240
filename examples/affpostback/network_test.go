package affpostback

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
)

// network is a fake affiliate network's postback receiver. Like real ones
// it knows nothing of idempotency keys: every request it receives is a
// conversion, counted by txid, whatever its headers. It answers 200 unless
// a script says otherwise.
type network struct {
	srv *httptest.Server

	mu      sync.Mutex
	hits    map[string]int // requests received, by txid
	last    map[string]url.Values
	scripts map[string][]int // statuses to answer, in order, by txid; then 200
	gate    *gate            // when set, the next request waits for it
}

type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

func newNetwork(t *testing.T) *network {
	t.Helper()
	n := &network{hits: map[string]int{}, last: map[string]url.Values{}, scripts: map[string][]int{}}
	n.srv = httptest.NewServer(http.HandlerFunc(n.handle))
	t.Cleanup(n.srv.Close)
	return n
}

// url is the postback URL the network gave us, with its fixed parameter.
func (n *network) url() string { return n.srv.URL + "/postback?offer=42" }

func (n *network) handle(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	txid := q.Get("txid")
	n.mu.Lock()
	n.hits[txid]++
	n.last[txid] = q
	status := http.StatusOK
	if s := n.scripts[txid]; len(s) > 0 {
		status, n.scripts[txid] = s[0], s[1:]
	}
	g := n.gate
	n.gate = nil
	n.mu.Unlock()
	if g != nil {
		close(g.entered)
		<-g.release
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(http.StatusText(status)))
}

// answer scripts the next statuses for txid.
func (n *network) answer(txid string, statuses ...int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.scripts[txid] = append(n.scripts[txid], statuses...)
}

// holdNext makes the next request wait until release is called; entered is
// closed when it has arrived.
func (n *network) holdNext(t *testing.T) (entered <-chan struct{}, release func()) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	n.mu.Lock()
	n.gate = g
	n.mu.Unlock()
	release = func() { g.once.Do(func() { close(g.release) }) }
	t.Cleanup(release) // before the server closes
	return g.entered, release
}

func (n *network) hitsFor(txid string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hits[txid]
}

func (n *network) total() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	sum := 0
	for _, h := range n.hits {
		sum += h
	}
	return sum
}

func (n *network) lastQuery(txid string) url.Values {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.last[txid]
}
