package stripefake

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
)

// call is one request as seen by an endpoint handler.
type call struct {
	r      *http.Request
	params params
	key    string
	ids    []string // identifiers taken from the path
	rec    *RequestRecord

	finished bool // rec stored

	// noWrite is set by FaultServerErrorSavedBeforeWrite: a handler that
	// has validated the request returns started() instead of changing state.
	noWrite bool
}

// result is what a handler did. executed is false when the request was
// rejected before the endpoint started (validation, missing resource): such
// results are not saved under the idempotency key.
type result struct {
	rep      reply
	executed bool
	objectID string
}

// handlerFunc runs with the server's lock held.
type handlerFunc func(s *Server, c *call) result

func rejected(r reply) result { return result{rep: r} }

// started is the result of a handler stopped by noWrite after validation:
// the endpoint began executing and wrote nothing. The caller replaces the
// empty reply with the fault's.
func started() result { return result{executed: true} }

func rejectedPtr(r *reply) result { return result{rep: *r} }

func ok(objectID string, v any) result {
	return result{rep: jsonReply(http.StatusOK, v), executed: true, objectID: objectID}
}

// endpoint is what the router found for a request: its handler, the
// identifiers taken from the path, and the operation and kind it addresses.
type endpoint struct {
	h    handlerFunc
	ids  []string
	op   Op
	kind Kind
}

// route finds the endpoint of method and path. Its op and kind are set
// whenever the path names a modelled resource, even when the method is not
// served (h nil), so that such a request is still counted as what it tried.
func route(method, p string) endpoint {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(parts) < 2 || parts[0] != "v1" {
		return endpoint{}
	}
	for _, part := range parts[1:] {
		if part == "" {
			return endpoint{}
		}
	}
	get, post := method == http.MethodGet, method == http.MethodPost
	// at picks the POST or GET handler of a collection (create, list) or
	// of one object (update, retrieve); a nil handler is not served.
	at := func(kind Kind, one bool, ids []string, onPost, onGet handlerFunc) endpoint {
		e := endpoint{ids: ids, kind: kind}
		switch {
		case post && !one:
			e.op, e.h = OpCreate, onPost
		case post:
			e.op, e.h = OpUpdate, onPost
		case get && !one:
			e.op, e.h = OpList, onGet
		case get:
			e.op, e.h = OpRetrieve, onGet
		}
		return e
	}
	switch {
	case len(parts) == 2 && parts[1] == "promotion_codes":
		return at(KindPromotionCode, false, nil, (*Server).createPromotionCode, (*Server).listPromotionCodes)
	case len(parts) == 3 && parts[1] == "promotion_codes":
		return at(KindPromotionCode, true, parts[2:], (*Server).updatePromotionCode, (*Server).getPromotionCode)
	case len(parts) == 2 && parts[1] == "refunds":
		return at(KindRefund, false, nil, (*Server).createRefund, (*Server).listRefunds)
	case len(parts) == 3 && parts[1] == "refunds":
		return at(KindRefund, true, parts[2:], nil, (*Server).getRefund)
	case len(parts) == 4 && parts[1] == "customers" && parts[3] == "balance_transactions":
		return at(KindCustomerBalanceTransaction, false, parts[2:3],
			(*Server).createBalanceTransaction, (*Server).listBalanceTransactions)
	case len(parts) == 5 && parts[1] == "customers" && parts[3] == "balance_transactions":
		return at(KindCustomerBalanceTransaction, true, []string{parts[2], parts[4]}, nil, (*Server).getBalanceTransaction)
	}
	return endpoint{}
}

func (s *Server) recordObjectLocked(kind Kind, id string, c *call) {
	s.objects = append(s.objects, Object{
		Kind:           kind,
		ID:             id,
		IdempotencyKey: c.key,
		RequestID:      c.rec.RequestID,
		Created:        s.now,
	})
}

func unknownParam(name string) result {
	return rejected(invalidRequest(http.StatusBadRequest, "parameter_unknown",
		fmt.Sprintf("Received unknown parameter: %s", name), name))
}

func noSuch(status int, what, id, param string) result {
	return rejected(invalidRequest(status, "resource_missing", fmt.Sprintf("No such %s: '%s'", what, id), param))
}

// ---- lists ----

type listJSON[T any] struct {
	Object  string `json:"object"`
	Data    []T    `json:"data"`
	HasMore bool   `json:"has_more"`
	URL     string `json:"url"`
}

// paginate applies limit, starting_after and ending_before to items, which
// are newest first as Stripe lists them.
func paginate[T any](p params, items []T, id func(T) string) ([]T, bool, *reply) {
	limit := int64(10)
	if n, set, bad := p.int64("limit"); bad != nil {
		return nil, false, bad
	} else if set {
		if n < 1 || n > 100 {
			r := invalidRequest(http.StatusBadRequest, "", "Invalid limit: must be between 1 and 100", "limit")
			return nil, false, &r
		}
		limit = n
	}
	find := func(param string) (int, bool, *reply) {
		v, set, bad := p.str(param)
		if bad != nil || !set {
			return 0, false, bad
		}
		i := slices.IndexFunc(items, func(t T) bool { return id(t) == v })
		if i < 0 {
			r := invalidRequest(http.StatusBadRequest, "resource_missing", fmt.Sprintf("No such object: '%s'", v), param)
			return 0, false, &r
		}
		return i, true, nil
	}
	if i, set, bad := find("starting_after"); bad != nil {
		return nil, false, bad
	} else if set {
		items = items[i+1:]
	} else if j, set, bad := find("ending_before"); bad != nil {
		return nil, false, bad
	} else if set {
		start := max(0, j-int(limit))
		return items[start:j], start > 0, nil
	}
	if len(items) > int(limit) {
		return items[:limit], true, nil
	}
	return items, false, nil
}

// createdFilter returns the filter a list's created parameter asks for:
// created=T (exactly T) or any of created[gt], created[gte], created[lt] and
// created[lte], in Unix seconds. Without the parameter every time matches.
func (p params) createdFilter() (func(created int64) bool, *reply) {
	type bound struct {
		op string
		t  int64
	}
	var bounds []bound
	for _, kv := range p {
		if topName(kv.Key) != "created" {
			continue
		}
		op := "eq"
		if kv.Key != "created" {
			inner, ok := strings.CutSuffix(strings.TrimPrefix(kv.Key, "created["), "]")
			if !ok || !slices.Contains([]string{"gt", "gte", "lt", "lte"}, inner) {
				return nil, ptr(invalidRequest(http.StatusBadRequest, "parameter_unknown",
					fmt.Sprintf("Received unknown parameter: %s", kv.Key), kv.Key))
			}
			op = inner
		}
		t, _, bad := p.int64(kv.Key)
		if bad != nil {
			return nil, bad
		}
		bounds = append(bounds, bound{op, t})
	}
	return func(created int64) bool {
		for _, b := range bounds {
			switch {
			case b.op == "eq" && created != b.t,
				b.op == "gt" && created <= b.t,
				b.op == "gte" && created < b.t,
				b.op == "lt" && created >= b.t,
				b.op == "lte" && created > b.t:
				return false
			}
		}
		return true
	}, nil
}

func ptr[T any](v T) *T { return &v }

func newestFirst[T any](items []T, keep func(T) bool) []T {
	var out []T
	for i := len(items) - 1; i >= 0; i-- {
		if keep(items[i]) {
			out = append(out, items[i])
		}
	}
	return out
}

// ---- coupons ----

type coupon struct {
	id         string
	percentOff float64
	created    int64
}

type couponJSON struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"`
	AmountOff        *int64            `json:"amount_off"`
	Created          int64             `json:"created"`
	Currency         *string           `json:"currency"`
	Duration         string            `json:"duration"`
	DurationInMonths *int64            `json:"duration_in_months"`
	Livemode         bool              `json:"livemode"`
	MaxRedemptions   *int64            `json:"max_redemptions"`
	Metadata         map[string]string `json:"metadata"`
	Name             *string           `json:"name"`
	PercentOff       float64           `json:"percent_off"`
	RedeemBy         *int64            `json:"redeem_by"`
	TimesRedeemed    int64             `json:"times_redeemed"`
	Valid            bool              `json:"valid"`
}

func (c *coupon) json() couponJSON {
	return couponJSON{
		ID: c.id, Object: "coupon", Created: c.created, Duration: "once",
		Metadata: map[string]string{}, PercentOff: c.percentOff, Valid: true,
	}
}

// AddCoupon seeds a coupon with a percentage discount (a "once" coupon).
// Promotion codes can only be created for seeded coupons. Adding an existing
// id replaces it.
func (s *Server) AddCoupon(id string, percentOff float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.coupons[id] = &coupon{id: id, percentOff: percentOff, created: s.now.Unix()}
}

// ---- promotion codes ----

type promotionCode struct {
	id             string
	code           string
	coupon         *coupon
	customer       string
	active         bool
	maxRedemptions int64 // 0: none
	expiresAt      int64 // 0: none
	metadata       map[string]string
	created        int64
}

type promotionCodeJSON struct {
	ID             string            `json:"id"`
	Object         string            `json:"object"`
	Active         bool              `json:"active"`
	Code           string            `json:"code"`
	Coupon         couponJSON        `json:"coupon"`
	Created        int64             `json:"created"`
	Customer       *string           `json:"customer"`
	ExpiresAt      *int64            `json:"expires_at"`
	Livemode       bool              `json:"livemode"`
	MaxRedemptions *int64            `json:"max_redemptions"`
	Metadata       map[string]string `json:"metadata"`
	Restrictions   restrictionsJSON  `json:"restrictions"`
	TimesRedeemed  int64             `json:"times_redeemed"`
}

type restrictionsJSON struct {
	CurrencyOptions       map[string]any `json:"currency_options"`
	FirstTimeTransaction  bool           `json:"first_time_transaction"`
	MinimumAmount         *int64         `json:"minimum_amount"`
	MinimumAmountCurrency *string        `json:"minimum_amount_currency"`
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optInt(n int64) *int64 {
	if n == 0 {
		return nil
	}
	return &n
}

func (p *promotionCode) json() promotionCodeJSON {
	return promotionCodeJSON{
		ID: p.id, Object: "promotion_code", Active: p.active, Code: p.code,
		Coupon: p.coupon.json(), Created: p.created, Customer: optString(p.customer),
		ExpiresAt: optInt(p.expiresAt), MaxRedemptions: optInt(p.maxRedemptions),
		Metadata:     maps.Clone(p.metadata),
		Restrictions: restrictionsJSON{CurrencyOptions: map[string]any{}},
	}
}

var promoCreateParams = []string{"active", "code", "coupon", "customer", "expand", "expires_at",
	"max_redemptions", "metadata", "restrictions"}

func (s *Server) createPromotionCode(c *call) result {
	p := c.params
	if name, bad := p.unknown(promoCreateParams...); bad {
		return unknownParam(name)
	}
	couponID, bad := p.required("coupon")
	if bad != nil {
		return rejectedPtr(bad)
	}
	cp := s.coupons[couponID]
	if cp == nil {
		return noSuch(http.StatusBadRequest, "coupon", couponID, "coupon")
	}
	customer, _, bad := p.str("customer")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if customer != "" && !strings.HasPrefix(customer, "cus_") {
		return noSuch(http.StatusBadRequest, "customer", customer, "customer")
	}
	maxRed, set, bad := p.int64("max_redemptions")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if set && maxRed < 1 {
		return rejected(invalidRequest(http.StatusBadRequest, "parameter_invalid_integer",
			"This value must be greater than or equal to 1.", "max_redemptions"))
	}
	expiresAt, _, bad := p.int64("expires_at")
	if bad != nil {
		return rejectedPtr(bad)
	}
	active, set, bad := p.bool("active")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if !set {
		active = true
	}
	meta, _, bad := p.metadata()
	if bad != nil {
		return rejectedPtr(bad)
	}
	code, _, bad := p.str("code")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if code != "" && active {
		for _, other := range s.promos {
			if other.active && strings.EqualFold(other.code, code) {
				return rejected(invalidRequest(http.StatusBadRequest, "",
					fmt.Sprintf("An active promotion code with `code: %s` already exists.", code), "code"))
			}
		}
	}

	if c.noWrite {
		return started()
	}
	id := s.newIDLocked("promo")
	if code == "" {
		code = fmt.Sprintf("FAKE%06d", s.counters["promo"])
	}
	for k, v := range meta {
		if v == "" {
			delete(meta, k)
		}
	}
	if meta == nil {
		meta = map[string]string{}
	}
	pc := &promotionCode{
		id: id, code: code, coupon: cp, customer: customer, active: active,
		maxRedemptions: maxRed, expiresAt: expiresAt, metadata: meta, created: s.now.Unix(),
	}
	s.promos = append(s.promos, pc)
	s.promoByID[id] = pc
	s.recordObjectLocked(KindPromotionCode, id, c)
	return ok(id, pc.json())
}

func (s *Server) updatePromotionCode(c *call) result {
	p := c.params
	pc := s.promoByID[c.ids[0]]
	if pc == nil {
		return noSuch(http.StatusNotFound, "promotion code", c.ids[0], "id")
	}
	if name, bad := p.unknown("active", "expand", "metadata", "restrictions"); bad {
		return unknownParam(name)
	}
	active, setActive, bad := p.bool("active")
	if bad != nil {
		return rejectedPtr(bad)
	}
	meta, clear, bad := p.metadata()
	if bad != nil {
		return rejectedPtr(bad)
	}
	if setActive && active && !pc.active {
		for _, other := range s.promos {
			if other != pc && other.active && strings.EqualFold(other.code, pc.code) {
				return rejected(invalidRequest(http.StatusBadRequest, "",
					fmt.Sprintf("An active promotion code with `code: %s` already exists.", pc.code), "active"))
			}
		}
	}
	if c.noWrite {
		return started()
	}
	if setActive {
		pc.active = active
	}
	if clear {
		pc.metadata = map[string]string{}
	}
	for k, v := range meta {
		if v == "" {
			delete(pc.metadata, k)
		} else {
			pc.metadata[k] = v
		}
	}
	return ok(pc.id, pc.json())
}

func (s *Server) getPromotionCode(c *call) result {
	if name, bad := c.params.unknown("expand"); bad {
		return unknownParam(name)
	}
	pc := s.promoByID[c.ids[0]]
	if pc == nil {
		return noSuch(http.StatusNotFound, "promotion code", c.ids[0], "id")
	}
	return ok(pc.id, pc.json())
}

func (s *Server) listPromotionCodes(c *call) result {
	p := c.params
	if name, bad := p.unknown("active", "code", "coupon", "created", "customer", "ending_before",
		"expand", "limit", "starting_after"); bad {
		return unknownParam(name)
	}
	active, filterActive, bad := p.bool("active")
	if bad != nil {
		return rejectedPtr(bad)
	}
	code, _, bad := p.str("code")
	if bad != nil {
		return rejectedPtr(bad)
	}
	couponID, _, bad := p.str("coupon")
	if bad != nil {
		return rejectedPtr(bad)
	}
	customer, _, bad := p.str("customer")
	if bad != nil {
		return rejectedPtr(bad)
	}
	inCreated, bad := p.createdFilter()
	if bad != nil {
		return rejectedPtr(bad)
	}
	items := newestFirst(s.promos, func(pc *promotionCode) bool {
		return inCreated(pc.created) && (!filterActive || pc.active == active) &&
			(code == "" || strings.EqualFold(pc.code, code)) &&
			(couponID == "" || pc.coupon.id == couponID) &&
			(customer == "" || pc.customer == customer)
	})
	page, more, bad := paginate(p, items, func(pc *promotionCode) string { return pc.id })
	if bad != nil {
		return rejectedPtr(bad)
	}
	out := listJSON[promotionCodeJSON]{Object: "list", Data: []promotionCodeJSON{}, HasMore: more, URL: "/v1/promotion_codes"}
	for _, pc := range page {
		out.Data = append(out.Data, pc.json())
	}
	return ok("", out)
}

// ---- payment intents and refunds ----

type paymentIntent struct {
	id       string
	chargeID string
	amount   int64
	refunded int64
	currency string
}

// AddPaymentIntent seeds a succeeded payment intent of amount (in the
// currency's smallest unit) that refunds can draw on. Adding an existing id
// replaces it and forgets what was refunded.
func (s *Server) AddPaymentIntent(id string, amount int64, currency string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.intents[id] = &paymentIntent{id: id, chargeID: s.newIDLocked("ch"), amount: amount, currency: strings.ToLower(currency)}
}

// Refunded returns the total refunded so far on a seeded payment intent.
func (s *Server) Refunded(paymentIntentID string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pi := s.intents[paymentIntentID]; pi != nil {
		return pi.refunded
	}
	return 0
}

type refund struct {
	id            string
	paymentIntent *paymentIntent
	amount        int64
	reason        string
	metadata      map[string]string
	created       int64
}

type refundJSON struct {
	ID                 string            `json:"id"`
	Object             string            `json:"object"`
	Amount             int64             `json:"amount"`
	BalanceTransaction *string           `json:"balance_transaction"`
	Charge             string            `json:"charge"`
	Created            int64             `json:"created"`
	Currency           string            `json:"currency"`
	Metadata           map[string]string `json:"metadata"`
	PaymentIntent      string            `json:"payment_intent"`
	Reason             *string           `json:"reason"`
	ReceiptNumber      *string           `json:"receipt_number"`
	Status             string            `json:"status"`
}

func (r *refund) json() refundJSON {
	return refundJSON{
		ID: r.id, Object: "refund", Amount: r.amount, Charge: r.paymentIntent.chargeID, Created: r.created,
		Currency: r.paymentIntent.currency, Metadata: maps.Clone(r.metadata), PaymentIntent: r.paymentIntent.id,
		Reason: optString(r.reason), Status: "succeeded",
	}
}

var refundCreateParams = []string{"amount", "charge", "currency", "customer", "expand", "instructions_email",
	"metadata", "origin", "payment_intent", "reason", "refund_application_fee", "reverse_transfer"}

func (s *Server) createRefund(c *call) result {
	p := c.params
	if name, bad := p.unknown(refundCreateParams...); bad {
		return unknownParam(name)
	}
	if charge, set, bad := p.str("charge"); bad != nil {
		return rejectedPtr(bad)
	} else if set {
		// Only payment intents are modelled; look the charge up among them.
		var found *paymentIntent
		for _, pi := range s.intents {
			if pi.chargeID == charge {
				found = pi
			}
		}
		if found == nil {
			return noSuch(http.StatusBadRequest, "charge", charge, "charge")
		}
		if p.has("payment_intent") {
			return rejected(invalidRequest(http.StatusBadRequest, "",
				"You can only specify one of these parameters: charge, payment_intent.", "payment_intent"))
		}
		return s.refundIntent(c, found)
	}
	piID, set, bad := p.str("payment_intent")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if !set {
		return rejected(invalidRequest(http.StatusBadRequest, "parameter_missing",
			"One of the following params should be provided for this request: payment_intent or charge.", "payment_intent"))
	}
	pi := s.intents[piID]
	if pi == nil {
		return noSuch(http.StatusBadRequest, "payment_intent", piID, "payment_intent")
	}
	return s.refundIntent(c, pi)
}

func (s *Server) refundIntent(c *call, pi *paymentIntent) result {
	p := c.params
	remaining := pi.amount - pi.refunded
	amount, set, bad := p.int64("amount")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if set && amount < 1 {
		return rejected(invalidRequest(http.StatusBadRequest, "parameter_invalid_integer",
			"Invalid positive integer", "amount"))
	}
	if remaining <= 0 {
		return rejected(invalidRequest(http.StatusBadRequest, "charge_already_refunded",
			fmt.Sprintf("Charge %s has already been refunded.", pi.chargeID), ""))
	}
	if !set {
		amount = remaining
	}
	if amount > remaining {
		return rejected(invalidRequest(http.StatusBadRequest, "amount_too_large", fmt.Sprintf(
			"Refund amount (%d %s) is greater than unrefunded amount on charge (%d %s)",
			amount, pi.currency, remaining, pi.currency), "amount"))
	}
	reason, _, bad := p.str("reason")
	if bad != nil {
		return rejectedPtr(bad)
	}
	switch reason {
	case "", "duplicate", "fraudulent", "requested_by_customer":
	default:
		return rejected(invalidRequest(http.StatusBadRequest, "",
			"Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer", "reason"))
	}
	if cur, set, bad := p.str("currency"); bad != nil {
		return rejectedPtr(bad)
	} else if set && strings.ToLower(cur) != pi.currency {
		return rejected(invalidRequest(http.StatusBadRequest, "",
			fmt.Sprintf("The currency %s does not match the currency of the payment (%s).", cur, pi.currency), "currency"))
	}
	meta, _, bad := p.metadata()
	if bad != nil {
		return rejectedPtr(bad)
	}
	if meta == nil {
		meta = map[string]string{}
	}
	if c.noWrite {
		return started()
	}
	pi.refunded += amount
	rf := &refund{id: s.newIDLocked("re"), paymentIntent: pi, amount: amount, reason: reason,
		metadata: meta, created: s.now.Unix()}
	s.refunds = append(s.refunds, rf)
	s.recordObjectLocked(KindRefund, rf.id, c)
	return ok(rf.id, rf.json())
}

func (s *Server) getRefund(c *call) result {
	if name, bad := c.params.unknown("expand"); bad {
		return unknownParam(name)
	}
	for _, rf := range s.refunds {
		if rf.id == c.ids[0] {
			return ok(rf.id, rf.json())
		}
	}
	return noSuch(http.StatusNotFound, "refund", c.ids[0], "id")
}

func (s *Server) listRefunds(c *call) result {
	p := c.params
	if name, bad := p.unknown("charge", "created", "ending_before", "expand", "limit", "payment_intent",
		"starting_after"); bad {
		return unknownParam(name)
	}
	piID, _, bad := p.str("payment_intent")
	if bad != nil {
		return rejectedPtr(bad)
	}
	charge, _, bad := p.str("charge")
	if bad != nil {
		return rejectedPtr(bad)
	}
	inCreated, bad := p.createdFilter()
	if bad != nil {
		return rejectedPtr(bad)
	}
	items := newestFirst(s.refunds, func(rf *refund) bool {
		return inCreated(rf.created) && (piID == "" || rf.paymentIntent.id == piID) && (charge == "" || rf.paymentIntent.chargeID == charge)
	})
	page, more, bad := paginate(p, items, func(rf *refund) string { return rf.id })
	if bad != nil {
		return rejectedPtr(bad)
	}
	out := listJSON[refundJSON]{Object: "list", Data: []refundJSON{}, HasMore: more, URL: "/v1/refunds"}
	for _, rf := range page {
		out.Data = append(out.Data, rf.json())
	}
	return ok("", out)
}

// ---- customer balance transactions ----

type customerBalance struct {
	currency string
	balance  int64
}

type balanceTransaction struct {
	id            string
	customer      string
	amount        int64
	currency      string
	description   string
	endingBalance int64
	metadata      map[string]string
	created       int64
}

type balanceTransactionJSON struct {
	ID            string            `json:"id"`
	Object        string            `json:"object"`
	Amount        int64             `json:"amount"`
	Created       int64             `json:"created"`
	CreditNote    *string           `json:"credit_note"`
	Currency      string            `json:"currency"`
	Customer      string            `json:"customer"`
	Description   *string           `json:"description"`
	EndingBalance int64             `json:"ending_balance"`
	Invoice       *string           `json:"invoice"`
	Livemode      bool              `json:"livemode"`
	Metadata      map[string]string `json:"metadata"`
	Type          string            `json:"type"`
}

func (b *balanceTransaction) json() balanceTransactionJSON {
	return balanceTransactionJSON{
		ID: b.id, Object: "customer_balance_transaction", Amount: b.amount, Created: b.created,
		Currency: b.currency, Customer: b.customer, Description: optString(b.description),
		EndingBalance: b.endingBalance, Metadata: maps.Clone(b.metadata), Type: "adjustment",
	}
}

// CustomerBalance returns a customer's balance: the sum of the amounts of its
// balance transactions (negative is a credit the customer can spend).
func (s *Server) CustomerBalance(customerID string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.balances[customerID]; b != nil {
		return b.balance
	}
	return 0
}

func validCustomer(id string) bool { return strings.HasPrefix(id, "cus_") && len(id) > len("cus_") }

func (s *Server) createBalanceTransaction(c *call) result {
	p := c.params
	customer := c.ids[0]
	if !validCustomer(customer) {
		return noSuch(http.StatusNotFound, "customer", customer, "customer")
	}
	if name, bad := p.unknown("amount", "currency", "description", "expand", "metadata"); bad {
		return unknownParam(name)
	}
	amount, set, bad := p.int64("amount")
	if bad != nil {
		return rejectedPtr(bad)
	}
	if !set {
		return rejected(invalidRequest(http.StatusBadRequest, "parameter_missing", "Missing required param: amount.", "amount"))
	}
	currency, bad := p.required("currency")
	if bad != nil {
		return rejectedPtr(bad)
	}
	currency = strings.ToLower(currency)
	bal := s.balances[customer]
	if bal != nil && bal.currency != currency {
		return rejected(invalidRequest(http.StatusBadRequest, "", fmt.Sprintf(
			"The currency %s does not match the customer's currency %s.", currency, bal.currency), "currency"))
	}
	description, _, bad := p.str("description")
	if bad != nil {
		return rejectedPtr(bad)
	}
	meta, _, bad := p.metadata()
	if bad != nil {
		return rejectedPtr(bad)
	}
	if meta == nil {
		meta = map[string]string{}
	}
	if c.noWrite {
		return started()
	}
	if bal == nil {
		bal = &customerBalance{currency: currency}
		s.balances[customer] = bal
	}
	bal.balance += amount
	bt := &balanceTransaction{
		id: s.newIDLocked("cbtxn"), customer: customer, amount: amount, currency: currency,
		description: description, endingBalance: bal.balance, metadata: meta, created: s.now.Unix(),
	}
	s.cbtxns = append(s.cbtxns, bt)
	s.recordObjectLocked(KindCustomerBalanceTransaction, bt.id, c)
	return ok(bt.id, bt.json())
}

func (s *Server) getBalanceTransaction(c *call) result {
	if name, bad := c.params.unknown("expand"); bad {
		return unknownParam(name)
	}
	for _, bt := range s.cbtxns {
		if bt.customer == c.ids[0] && bt.id == c.ids[1] {
			return ok(bt.id, bt.json())
		}
	}
	return noSuch(http.StatusNotFound, "customer balance transaction", c.ids[1], "id")
}

func (s *Server) listBalanceTransactions(c *call) result {
	p := c.params
	customer := c.ids[0]
	if !validCustomer(customer) {
		return noSuch(http.StatusNotFound, "customer", customer, "customer")
	}
	if name, bad := p.unknown("ending_before", "expand", "limit", "starting_after"); bad {
		return unknownParam(name)
	}
	items := newestFirst(s.cbtxns, func(bt *balanceTransaction) bool { return bt.customer == customer })
	page, more, bad := paginate(p, items, func(bt *balanceTransaction) string { return bt.id })
	if bad != nil {
		return rejectedPtr(bad)
	}
	out := listJSON[balanceTransactionJSON]{Object: "list", Data: []balanceTransactionJSON{}, HasMore: more,
		URL: "/v1/customers/" + customer + "/balance_transactions"}
	for _, bt := range page {
		out.Data = append(out.Data, bt.json())
	}
	return ok("", out)
}
