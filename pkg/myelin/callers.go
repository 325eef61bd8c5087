package myelin

import (
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/myelin-chat/myelin/pkg/rpc"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// AdminCaller is the certificate name of an operator's tool (myelin
// rotate-key run outside the key-server's pod).
const AdminCaller = "myelin-admin"

// CallerPolicy is the gRPC caller matrix enforced with mutual TLS
// (grpc.tls): each service admits only the services that call it, named
// by their certificates (common name or a DNS name equal to the target
// name, e.g. "room-server"). docs/architecture.md shows it as a table, and
// the Helm chart's NetworkPolicies follow it.
func CallerPolicy() rpc.Policy {
	return rpc.Policy{
		// Signing with the server's key: only the room-server signs JSON
		// through the key-server (SignJSON).
		keyserverv1.KeyService_ServiceDesc.ServiceName: {TargetRoomServer},
		// The signing key (for X-Matrix requests) and other servers'
		// keys: the services that make or check federation requests.
		keyserverv1.ServerKeyService_ServiceDesc.ServiceName: {TargetRoomServer, TargetFederationSender,
			TargetFederationReceiver, TargetMedia},
		keyserverv1.ServerKeyService_RotateKey_FullMethodName: {TargetKeyServer, AdminCaller},
		keyserverv1.E2EKeyService_ServiceDesc.ServiceName:     {TargetClientAPI, TargetFederationReceiver},
		roomserverv1.RoomService_ServiceDesc.ServiceName: {TargetClientAPI, TargetPresence, TargetFederationSender,
			TargetFederationReceiver, TargetAppservice},
		appservicev1.AppserviceService_ServiceDesc.ServiceName:      {TargetClientAPI},
		presencev1.PresenceService_ServiceDesc.ServiceName:          {TargetClientAPI, TargetFederationReceiver},
		mediav1.MediaService_ServiceDesc.ServiceName:                {TargetClientAPI},
		clientapiv1.UserService_ServiceDesc.ServiceName:             {TargetMedia, TargetFederationReceiver},
		fedsenderv1.FederationSenderService_ServiceDesc.ServiceName: {TargetClientAPI},
		grpc_health_v1.Health_ServiceDesc.ServiceName:               {rpc.AnyCaller},
	}
}

// SignaturesCheckedCallers are the callers whose InputEvent.signatures_checked
// the room-server honours (it skips checking those outliers' signatures
// again): the federation-sender, which checks a send_join answer's
// signatures itself. Another caller's flag is ignored. A caller is named
// as in CallerPolicy: by its certificate in the split shape, by the name
// it dialled with in-process (rpc.CallerOf), so without grpc.tls a call
// from another process is never trusted with it.
func SignaturesCheckedCallers() []string {
	return []string{TargetFederationSender}
}
