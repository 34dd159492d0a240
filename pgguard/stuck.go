package pgguard

import (
	"context"
	"fmt"
)

// CountStuck returns how many records nobody will finish on their own
// (idempotency.Stuck: in doubt, held past their lease, unknown past the
// provider's window) each namespace holds, in one query on the ledger's
// stuck index; namespaces with none are absent. Monitoring reads it (the
// effectotel stuck gauge uses it when the store offers it).
func (s *Store) CountStuck(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.Query(ctx, `WITH clock AS MATERIALIZED (SELECT `+nowParam("$1")+` AS now)
SELECT namespace, count(*) FROM `+s.n.table+`, clock
WHERE `+stuckPredicate+`
GROUP BY namespace`, s.n.clock())
	if err != nil {
		return nil, wrapErr(ctx, "count stuck", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var ns string
		var n int
		if err := rows.Scan(&ns, &n); err != nil {
			return nil, wrapErr(ctx, "count stuck", err)
		}
		out[ns] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgguard: count stuck: %w", err)
	}
	return out, nil
}
