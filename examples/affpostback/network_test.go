package affpostback

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

// network is a fake affiliate network's postback receiver, built on
// httpfake. Like real ones it knows nothing of idempotency keys
// (IgnoresKey): every request it accepts is a conversion, counted by its
// txid, whatever its headers. It answers 200 unless Answer scripted
// otherwise for the txid.
type network struct{ *httpfake.Receiver }

func newNetwork(t *testing.T) *network {
	t.Helper()
	n := &network{httpfake.New(&httpfake.Config{
		IgnoresKey: true,
		Key:        func(r *http.Request, _ []byte) string { return r.URL.Query().Get("txid") },
		Pattern:    "GET /postback",
	})}
	t.Cleanup(n.Close) // releases a request still held
	return n
}

// url is the postback URL the network gave us, with its fixed parameter.
func (n *network) url() string { return n.URL() + "/postback?offer=42" }

// hitsFor is the number of requests received for txid, whatever their
// answer.
func (n *network) hitsFor(txid string) int { return len(n.RequestsFor(txid)) }

// lastQuery is the query of the last request received for txid.
func (n *network) lastQuery(txid string) url.Values {
	reqs := n.RequestsFor(txid)
	if len(reqs) == 0 {
		return nil
	}
	return reqs[len(reqs)-1].URL.Query()
}
