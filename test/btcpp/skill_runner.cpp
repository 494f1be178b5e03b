// A robot's BehaviorTree.CPP application in miniature: it registers the generic `Skill`
// action node with its three input ports and the `Holds` condition over its own world,
// loads a plan's XML (written by `python3 -m robot_llm_planner.cli bt-xml`) and ticks the
// tree to the end.
//
//   skill_runner PLAN.xml [FAULT ...]   print one JSON line per Skill started (name, action,
//                                       target, location, its status, and the needs that did
//                                       not hold when it started) and per Skill halted
//                                       (status HALTED), then the final status
//   skill_runner --nodes-model          print BehaviorTree.CPP's own TreeNodesModel
//
// A FAULT is ACTION (every Skill of that action fails), ACTION*N (its first N ticks fail),
// drop=OBJECT (after the first pick of OBJECT, it slips out of the hand: no longer held or
// found, as the next Skill starts), slip=OBJECT (the same, as the next Skill ends) or
// hang=ACTION[*N] (every Skill of that action, or its first N, stays RUNNING until halted).
//
// The world is the shipped skills' state in miniature (config/skills.yaml): the place, found
// and held objects, open and closed things; a successful Skill applies its skill's effects.
//
// Exit status: 0 the tree succeeded, 1 it failed, 2 the XML was refused (message on stderr).

#include <algorithm>
#include <cstdio>
#include <exception>
#include <iterator>
#include <iostream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

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

// The world the conditions are checked against.
struct World
{
  std::string place;
  std::set<std::string> found, opened, closed;
  std::vector<std::string> held;
  size_t max_held = 3;

  bool holds(const std::string& predicate, const std::string& value) const
  {
    if (predicate == "hand_free") {return held.size() < max_held;}
    if (predicate == "at") {return place == value;}
    if (predicate == "found") {return found.count(value) > 0;}
    if (predicate == "open") {return opened.count(value) > 0;}
    if (predicate == "closed") {return closed.count(value) > 0;}
    if (predicate == "held") {
      return value.empty() ? !held.empty() :
             std::find(held.begin(), held.end(), value) != held.end();
    }
    throw std::runtime_error("unknown predicate " + predicate);
  }

  // `found(水)`, `not held(水)`, `hand_free`
  bool holds(std::string fact) const
  {
    bool negated = fact.rfind("not ", 0) == 0;
    if (negated) {fact = fact.substr(4);}
    const size_t open = fact.find('(');
    std::string predicate = fact.substr(0, open), value;
    if (open != std::string::npos) {value = fact.substr(open + 1, fact.size() - open - 2);}
    return holds(predicate, value) != negated;
  }

  void drop(const std::string& object)
  {
    auto last = std::find(held.rbegin(), held.rend(), object);
    if (last != held.rend()) {held.erase(std::next(last).base());}
  }

  // The shipped skills' effects.
  void apply(const std::string& action, const std::string& target)
  {
    if (action == "寻找物体") {found.insert(target);}
    if (action == "拿起物体") {held.push_back(target);}
    if (action == "放下物体") {drop(target);}
    if (action == "移动到") {place = target;}
    if (action == "打开") {opened.insert(target); closed.erase(target);}
    if (action == "关闭") {closed.insert(target); opened.erase(target);}
    if (action == "递给" && !held.empty()) {held.pop_back();}
  }

  // The shipped skills' needs that do not hold (held(last) as "holds something").
  std::string unmet(const std::string& action, const std::string& target) const
  {
    std::string out;
    if (action == "拿起物体" && !holds("found", target)) {out += " found(" + target + ")";}
    if (action == "拿起物体" && !holds("hand_free", "")) {out += " hand_free";}
    if (action == "放下物体" && !holds("held", target)) {out += " held(" + target + ")";}
    if (action == "递给" && held.empty()) {out += " held(last)";}
    if (action == "递给" && !holds("at", target)) {out += " at(" + target + ")";}
    return out;
  }
};

World world;
std::map<std::string, int> failing;  // action -> ticks left that fail (-1: all)
std::map<std::string, int> hanging;  // action -> starts left that never end (-1: all)
std::set<std::string> drops, dropping;  // objects to drop after their pick; due now
std::set<std::string> slips, slipping;  // objects to slip after their pick; due now

// The objects slip out of the hand: no longer held or found.
void lose(std::set<std::string>& objects)
{
  for (const std::string& object : objects) {
    world.drop(object);
    world.found.erase(object);
  }
  objects.clear();
}

// Whether the next start of `action` takes a fault of `faults` (counting it down).
bool take(std::map<std::string, int>& faults, const std::string& action)
{
  auto fault = faults.find(action);
  if (fault == faults.end() || fault->second == 0) {return false;}
  if (fault->second > 0) {--fault->second;}
  return true;
}

// The node a robot registers once: it dispatches on `action` to its own skills. Stateful, so
// that a skill can run over several ticks (here: one that never ends, for Timeout).
class Skill : public BT::StatefulActionNode
{
public:
  Skill(const std::string& name, const BT::NodeConfig& config)
  : BT::StatefulActionNode(name, config) {}

  static BT::PortsList providedPorts()
  {
    return {BT::InputPort<std::string>("action", "the skill to run"),
            BT::InputPort<std::string>("target", "the object, place or person"),
            BT::InputPort<std::string>("location", "where (may be empty)")};
  }

  BT::NodeStatus onStart() override
  {
    action_ = getInput<std::string>("action").value();
    target_ = getInput<std::string>("target").value();
    location_ = getInput<std::string>("location").value();
    lose(dropping);
    std::set<std::string> slipped;
    slipped.swap(slipping);
    const std::string unmet = world.unmet(action_, target_);
    if (unmet.empty() && take(hanging, action_)) {
      print("RUNNING", unmet);
      return BT::NodeStatus::RUNNING;
    }
    const bool fails = take(failing, action_) || !unmet.empty();
    if (!fails) {
      world.apply(action_, target_);
      if (action_ == "拿起物体" && drops.erase(target_)) {dropping.insert(target_);}
      if (action_ == "拿起物体" && slips.erase(target_)) {slipping.insert(target_);}
    }
    lose(slipped);
    print(fails ? "FAILURE" : "SUCCESS", unmet);
    return fails ? BT::NodeStatus::FAILURE : BT::NodeStatus::SUCCESS;
  }

  BT::NodeStatus onRunning() override {return BT::NodeStatus::RUNNING;}  // it never ends

  void onHalted() override {print("HALTED", "");}

private:
  std::string action_, target_, location_;

  void print(const std::string& status, const std::string& unmet) const
  {
    std::cout << "[" << json_string(name()) << "," << json_string(action_) << ","
              << json_string(target_) << "," << json_string(location_) << ","
              << json_string(status) << "," << json_string(unmet) << "]" << std::endl;
  }
};

// The condition a robot registers beside Skill: whether a fact holds in its world.
class Holds : public BT::ConditionNode
{
public:
  Holds(const std::string& name, const BT::NodeConfig& config)
  : BT::ConditionNode(name, config) {}

  static BT::PortsList providedPorts()
  {
    return {BT::InputPort<std::string>("fact", "a fact about a thing that must hold")};
  }

  BT::NodeStatus tick() override
  {
    return world.holds(getInput<std::string>("fact").value()) ?
           BT::NodeStatus::SUCCESS : BT::NodeStatus::FAILURE;
  }
};

}  // namespace

int main(int argc, char** argv)
{
  BT::BehaviorTreeFactory factory;
  factory.registerNodeType<Skill>("Skill");
  factory.registerNodeType<Holds>("Holds");
  if (argc == 2 && std::string(argv[1]) == "--nodes-model") {
    std::cout << BT::writeTreeNodesModelXML(factory) << std::endl;
    return 0;
  }
  if (argc < 2) {
    std::cerr << "usage: skill_runner PLAN.xml [FAULT ...] | --nodes-model" << std::endl;
    return 2;
  }
  for (int i = 2; i < argc; ++i) {
    const std::string fault = argv[i];
    const size_t star = fault.find('*');
    if (fault.rfind("drop=", 0) == 0) {
      drops.insert(fault.substr(5));
    } else if (fault.rfind("slip=", 0) == 0) {
      slips.insert(fault.substr(5));
    } else if (fault.rfind("hang=", 0) == 0) {
      const std::string rest = fault.substr(5);
      const size_t count = rest.find('*');
      hanging[rest.substr(0, count)] =
        count == std::string::npos ? -1 : std::stoi(rest.substr(count + 1));
    } else if (star == std::string::npos) {
      failing[fault] = -1;
    } else {
      failing[fault.substr(0, star)] = std::stoi(fault.substr(star + 1));
    }
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
