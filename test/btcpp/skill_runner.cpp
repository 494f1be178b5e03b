// A robot's BehaviorTree.CPP application in miniature: it registers the generic `Skill`
// action node with its three input ports, loads a plan's XML (written by
// `python3 -m robot_llm_planner.cli bt-xml`) and ticks the tree to the end.
//
//   skill_runner PLAN.xml [FAILING_ACTION]   print one JSON line per Skill tick, then the
//                                            tree's final status; a Skill whose action is
//                                            FAILING_ACTION returns FAILURE
//   skill_runner --nodes-model               print BehaviorTree.CPP's own TreeNodesModel
//
// Exit status: 0 the tree succeeded, 1 it failed, 2 the XML was refused (message on stderr).

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include "behaviortree_cpp/bt_factory.h"
#include "behaviortree_cpp/xml_parsing.h"

namespace
{

std::string json_string(const std::string& text)
{
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
      out += buffer;
    } else {
      out += static_cast<char>(c);  // UTF-8 bytes pass through
    }
  }
  return out + "\"";
}

std::string failing_action;

// The node a robot registers once: it dispatches on `action` to its own skills.
class Skill : public BT::SyncActionNode
{
public:
  Skill(const std::string& name, const BT::NodeConfig& config)
  : BT::SyncActionNode(name, config) {}

  static BT::PortsList providedPorts()
  {
    return {BT::InputPort<std::string>("action", "the skill to run"),
            BT::InputPort<std::string>("target", "the object, place or person"),
            BT::InputPort<std::string>("location", "where (may be empty)")};
  }

  BT::NodeStatus tick() override
  {
    const std::string action = getInput<std::string>("action").value();
    const std::string target = getInput<std::string>("target").value();
    const std::string location = getInput<std::string>("location").value();
    std::cout << "[" << json_string(name()) << "," << json_string(action) << ","
              << json_string(target) << "," << json_string(location) << "]" << std::endl;
    return action == failing_action ? BT::NodeStatus::FAILURE : BT::NodeStatus::SUCCESS;
  }
};

}  // namespace

int main(int argc, char** argv)
{
  BT::BehaviorTreeFactory factory;
  factory.registerNodeType<Skill>("Skill");
  if (argc == 2 && std::string(argv[1]) == "--nodes-model") {
    std::cout << BT::writeTreeNodesModelXML(factory) << std::endl;
    return 0;
  }
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: skill_runner PLAN.xml [FAILING_ACTION] | --nodes-model" << std::endl;
    return 2;
  }
  if (argc == 3) {
    failing_action = argv[2];
  }
  try {
    BT::Tree tree = factory.createTreeFromFile(argv[1]);
    const BT::NodeStatus status = tree.tickWhileRunning();
    std::cout << "status " << BT::toStr(status) << std::endl;
    return status == BT::NodeStatus::SUCCESS ? 0 : 1;
  } catch (const std::exception& error) {
    std::cerr << "refused: " << error.what() << std::endl;
    return 2;
  }
}
