package clientapi

import "github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"

// RouteTable is the service's route table, for the external tests (the
// route fuzz test drives every route of it).
func RouteTable(s *Service) []httpapi.Route { return s.routes() }
